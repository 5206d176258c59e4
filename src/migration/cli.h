/* `vmferry migrate`: drive an outgoing migration from the command line. */
#ifndef VMFERRY_MIGRATION_CLI_H
#define VMFERRY_MIGRATION_CLI_H

/*
 * argv[0] is "migrate".  Refuses a VM that is migrating or waiting for an
 * incoming stream; sets the given parameters and the postcopy capability
 * and parameter the options ask for (off without a postcopy option), starts
 * the migration (pure postcopy: migrate-start-postcopy first), shows a live
 * progress line on stderr, prints the final query-migrate JSON on stdout.
 * Exit status 0 completed, 1 failed or cancelled, 2 usage.
 */
int migration_cli_main(int argc, char **argv);

#endif
