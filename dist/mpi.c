/* dist_mpi: dlopen OpenMPI and resolve what dist.c calls. */
#include "dist/mpi.h"
#include "common/err.h"

#include <dlfcn.h>
#include <stdlib.h>

int dist_mpi_load(dist_mpi *api, const char *lib, char *err)
{
    if (!lib) lib = getenv("MOET_MPI_LIB");
    if (!lib || !*lib) lib = DIST_MPI_LIB;
    /* RTLD_GLOBAL: OpenMPI dlopens its own components (mca_*.so), which need libmpi's symbols */
    void *h = dlopen(lib, RTLD_NOW | RTLD_GLOBAL);
    if (!h) return err_set(err, "cannot load %s (%s)", lib, dlerror());
    api->lib = h;
    struct { void **slot; const char *name; } fn[] = {
        {(void **)&api->Init_thread, "MPI_Init_thread"},
        {(void **)&api->Finalize, "MPI_Finalize"},
        {(void **)&api->Abort, "MPI_Abort"},
        {(void **)&api->Comm_rank, "MPI_Comm_rank"},
        {(void **)&api->Comm_size, "MPI_Comm_size"},
        {(void **)&api->Comm_set_errhandler, "MPI_Comm_set_errhandler"},
        {(void **)&api->Error_string, "MPI_Error_string"},
        {(void **)&api->Iallreduce, "MPI_Iallreduce"},
        {(void **)&api->Ireduce_scatter, "MPI_Ireduce_scatter"},
        {(void **)&api->Iallgatherv, "MPI_Iallgatherv"},
        {(void **)&api->Igatherv, "MPI_Igatherv"},
        {(void **)&api->Ibcast, "MPI_Ibcast"},
        {(void **)&api->Test, "MPI_Test"},
        {(void **)&api->Testall, "MPI_Testall"},
        {(void **)&api->world, "ompi_mpi_comm_world"},
        {(void **)&api->f32, "ompi_mpi_float"},
        {(void **)&api->f64, "ompi_mpi_double"},
        {(void **)&api->chr, "ompi_mpi_char"},
        {(void **)&api->dtype_null, "ompi_mpi_datatype_null"},
        {(void **)&api->sum, "ompi_mpi_op_sum"},
        {(void **)&api->min, "ompi_mpi_op_min"},
        {(void **)&api->errors_return, "ompi_mpi_errors_return"},
    };
    for (size_t i = 0; i < sizeof fn / sizeof fn[0]; i++) {
        /* a handle is the address of the predefined object, as mpi.h's macros take it */
        if (!(*fn[i].slot = dlsym(h, fn[i].name)))
            return err_set(err, "%s has no %s: not OpenMPI's libmpi.so.40?", lib, fn[i].name);
    }
    return 0;
}
