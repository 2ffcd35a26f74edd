from cnnsearch.cli import main

main()
