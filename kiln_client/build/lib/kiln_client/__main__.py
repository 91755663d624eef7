from kiln_client.cli import main

raise SystemExit(main())
