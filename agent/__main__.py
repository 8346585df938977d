from mailpath.agent.cli import main

main()
