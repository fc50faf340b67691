from dcnbench.cli.app import main

main()
