"""Config templates that `sequifier make NAME` copies into a new project."""
