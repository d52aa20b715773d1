"""A local page to try the model: upload or pick an image, paint a mask, inpaint, and save the
mask and parameters as a manifest row for a job. `batch-inpaint serve` starts it.

`inputs` checks and decodes what comes in (uploads, samples, painted layers), `manifests` writes
the rows, `handlers` holds what each event of the page does as plain functions (no gradio);
`layout` lays out the gradio components, `events` connects them to the handlers and `app`
serves the page.
"""
