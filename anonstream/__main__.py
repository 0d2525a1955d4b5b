from anonstream.cli import main

raise SystemExit(main())
