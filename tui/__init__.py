"""ftui's terminal interface: the command line (`tui.cli.main`) and the Textual app (`tui.app`)."""
