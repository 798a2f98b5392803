from bottle.cli import main

raise SystemExit(main())
