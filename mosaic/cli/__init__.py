"""The command line: one parser (``main.get_parser``), one module per subcommand."""
