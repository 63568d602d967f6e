from sarbot.cli import main

main()
