"""The command line: the argparse tree, each command group's handlers and their renderers."""
