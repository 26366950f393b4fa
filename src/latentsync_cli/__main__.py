from latentsync_cli.cli import main

main()
