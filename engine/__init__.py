"""ftui's headless engine: machine detection, model resolution, planning, runs.

This package never imports the UI layer, and imports the heavy ML stack (torch,
transformers, peft, ...) only inside the functions that need it, so that
`import engine` stays cheap for the CLI's start-up path.
"""

__version__ = "0.1.0"
