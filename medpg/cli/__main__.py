from medpg.cli import main

main()
