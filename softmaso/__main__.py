from softmaso.cli import main

main()
