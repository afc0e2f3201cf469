/* engage: the subcommands. Each takes argv with argv[0] = the subcommand name and returns the
 * process exit status (0 success, 1 failure, 2 usage error). */
#ifndef ENG_COMMANDS_H
#define ENG_COMMANDS_H

int eng_cmd_run(int argc, char **argv);
int eng_cmd_mock_api(int argc, char **argv);
int eng_cmd_dlq(int argc, char **argv);
int eng_cmd_backfill(int argc, char **argv);
int eng_cmd_status(int argc, char **argv);
int eng_cmd_top(int argc, char **argv);
int eng_cmd_capture(int argc, char **argv);

#endif
