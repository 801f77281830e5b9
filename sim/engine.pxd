# Cython declarations for sim/engine.py (read only when the compiled engine is built: see accel/). They give the
# hot objects C-typed attributes and let the engine's own calls between them skip Python's; the .py file stays the
# one source of the code, and runs as it is when no build is present. Arithmetic between C-typed values is C's:
# `1 << idx` with a typed idx overflows past 63, which is why a server keeps its mask bit as a Python int (`bit`).

from policies.rules cimport ServingView
from sim.clock cimport Clock, Due
from sim.tasks cimport TaskTimes

cdef class _Query:
    cdef public Py_ssize_t qid, model, got
    cdef public bint done
    cdef public object mask, cover  # Python ints: past 63 servers a mask is wider than 64 bits
    cdef public int how
    cdef public list tasks

cdef class _Task:
    cdef public Py_ssize_t k
    cdef public _Query q
    cdef public _Station station
    cdef public int role
    cdef public bint active, uncounted
    cdef public _Server server

cdef class _Timer(Due):
    cdef public _Query q

cdef class _Least:
    cdef public list heap, members
    cdef public Py_ssize_t k
    cpdef push(self, Py_ssize_t pos, Py_ssize_t load)
    cpdef _Station least(self)

cpdef _touch(_Station st)

cdef class _Station:
    cdef public Py_ssize_t idx, n_live
    cdef public object queue
    cdef public list servers, heaps
    cdef public double mean_ms
    cdef public _Server single
    cpdef submit(self, _Task task)

cdef class _Server:
    cdef public Py_ssize_t idx, host
    cdef public Clock env
    cdef public FastEngine eng
    cdef public _Station station
    cdef public _Task cur
    cdef public Due ev, qev, hold
    cdef public bint up
    cdef public int rr
    cdef public object bit, on_finish, slow, draw, pass_draw, cur_pass, table
    cdef public double t0, slowdown, work, mark, total, extra, q0, free_at, seen, woke, factor, share, lone
    cdef public double left_at, score
    cpdef start(self, _Task task)

cdef class _BatchServer(_Server):
    cdef public list batch
    cdef public Py_ssize_t max_batch

cdef class FastEngine(ServingView):
    cdef public Clock env
    cdef public TaskTimes tasks
    cdef public Py_ssize_t n, N, S, live, n_done, finishing, busy_n, n_held, free_slots, slots_max
    cdef public bint cancel_on, batching, has_out, has_back, net, sharing, finish_pass, stall, wake_others
    cdef public bint of_pass, slicing, disp_on, stop, uncoded, single_task, recursion
    cdef public double busy_done, busy_t0, corr_pass, rate, slot_speed, disp_end, cores
    cdef public object corr, after, wake, joined, disp, observe, rules
    cdef public object finish_ms, how, mask, ntask, ms, arr, models
    cdef public list busy, cancelled, lost
    cpdef answer(self, _Query q, int how, object mask)
    cpdef complete(self, _Task task, _Server srv)
    cpdef _arrive(self, Py_ssize_t k)
