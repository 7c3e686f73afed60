/* moet tokenizer: placeholder until its issue lands; says so rather than pretending. */
#include "train/cmd.h"

#include <stdio.h>

int cmd_tokenizer(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moet tokenizer: not implemented yet\n");
    return 1;
}
