from sarbot.cli.main import main

main()
