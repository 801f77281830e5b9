# Cython declarations for sim/tasks.py (read only when the compiled engine is built: see accel/).

cdef class TaskTimes:
    cdef dict __dict__
    cdef public list kind_of
    cdef public dict _times
    cpdef tuple block_times(self, Py_ssize_t slot, Py_ssize_t block, Py_ssize_t kind)
    cpdef tuple task_ms(self, Py_ssize_t slot, Py_ssize_t qid, Py_ssize_t server)
