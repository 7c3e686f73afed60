/* dist_mpi: OpenMPI's C API loaded at run time with dlopen("libmpi.so.40"), so moet neither
 * links nor loads MPI unless a launcher starts it as one of several ranks (dist.c decides).
 * Types and prototypes come from OpenMPI's mpi.h; the predefined handles (MPI_COMM_WORLD,
 * MPI_FLOAT, MPI_SUM, ...) are objects inside libmpi, looked up with dlsym like the functions.
 * libmpi.so.40 is OpenMPI's ABI (3.x, 4.x and 5.x); MPICH and its relatives are not supported. */
#ifndef MOET_DIST_MPI_H
#define MOET_DIST_MPI_H

#include <mpi.h>

#define DIST_MPI_LIB "libmpi.so.40"

typedef struct {
    void *lib;
    __typeof__(MPI_Init_thread) *Init_thread;
    __typeof__(MPI_Finalize) *Finalize;
    __typeof__(MPI_Abort) *Abort;
    __typeof__(MPI_Comm_rank) *Comm_rank;
    __typeof__(MPI_Comm_size) *Comm_size;
    __typeof__(MPI_Comm_set_errhandler) *Comm_set_errhandler;
    __typeof__(MPI_Error_string) *Error_string;
    __typeof__(MPI_Iallreduce) *Iallreduce;
    __typeof__(MPI_Ireduce_scatter) *Ireduce_scatter;
    __typeof__(MPI_Iallgatherv) *Iallgatherv;
    __typeof__(MPI_Igatherv) *Igatherv;
    __typeof__(MPI_Ibcast) *Ibcast;
    __typeof__(MPI_Test) *Test;
    __typeof__(MPI_Testall) *Testall;
    MPI_Comm world;
    MPI_Datatype f32, f64, chr, dtype_null;
    MPI_Op sum, min;
    MPI_Errhandler errors_return;
} dist_mpi;

/* Load lib (NULL: DIST_MPI_LIB, or $MOET_MPI_LIB) and every symbol above. 0, or -1 with the
 * reason (dlerror's words) in err. */
int dist_mpi_load(dist_mpi *api, const char *lib, char *err);

#endif
