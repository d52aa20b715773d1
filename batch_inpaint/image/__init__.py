"""Image work: decode and encode (codec), masks, the geometry of what the model sees, and
`inpaint_array`, which runs those steps around one model call in process. No torch, no Ray."""
