from gflow.cli import main

main()
