from distkg.cli.main import main

raise SystemExit(main())
