"""`python -m ext_authz ...`: the same as the `ext-authz` command."""

from ext_authz.cli import main

raise SystemExit(main())
