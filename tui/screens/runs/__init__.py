"""The runs list: every run with its status, and the stop/save/resume/delete dialogs."""
