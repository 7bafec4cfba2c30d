from distkg.cli.main import entry

entry()
