"""Build-time tools of the repository (code generation from protos/)."""
