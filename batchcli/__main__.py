from batchcli.cli import main

main()
