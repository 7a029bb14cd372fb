from faasd_py.cli import main

main()
