/* moet prep: placeholder until its issue lands; says so rather than pretending. */
#include "train/cmd.h"

#include <stdio.h>

int cmd_prep(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moet prep: not implemented yet\n");
    return 1;
}
