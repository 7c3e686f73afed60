/* cmd: one entry point per `moet` subcommand.  Each returns the process exit code
 * (0 ok, 1 bad input or failure, 2 usage error) and prints its own errors as one line
 * on stderr prefixed "moet <cmd>: ". Each lives in train/cmd_<name>.c. */
#ifndef MOET_CMD_H
#define MOET_CMD_H

int cmd_train(int argc, char **argv);
int cmd_prep(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_tokenizer(int argc, char **argv);   /* moet tokenizer train ... */
int cmd_eval(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_forward(int argc, char **argv);

/* True when argv holds -h or --help. */
int cmd_wants_help(int argc, char **argv);

/* Flag values, strictly: the whole string is the number, finite, within [lo, hi].
 * 0 ok (*out set), -1 not (the caller says which flag and exits 2). */
int cmd_long(const char *s, long lo, long hi, long *out);
int cmd_double(const char *s, double lo, double hi, double *out);

#endif
