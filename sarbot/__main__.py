from sarbot.ops.cli import main

main()
