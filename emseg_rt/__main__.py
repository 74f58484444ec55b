from emseg_rt.cli import main

main()
