"""A local page to try the model: upload or pick an image, paint a mask, inpaint, and save the
mask and parameters as a manifest row for a job. `batch-inpaint serve` starts it.

`handlers` holds what the page does as plain functions (no gradio); `app` builds the gradio page.
"""
