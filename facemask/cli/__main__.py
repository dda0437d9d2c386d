from facemask.cli import main

main()
