//! One module per subcommand: its clap argument struct and its `run`.
