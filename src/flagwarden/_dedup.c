/* The exposure dedup table of flagwarden.telemetry.dedup, compiled: the same table (16-way
 * sets of 32-bit fingerprints and 8-bit stamps, ticks of window/128) answered in one C call
 * per evaluation. Built when a compiler is there (an optional extension); the pure-Python
 * table in dedup.py gives the same answers without it.
 *
 * The call holds the interpreter lock from start to end, so a look-up and its update are
 * one step for every other thread, and a fork never sees half of one.
 *
 * The triple (flag, key, variant) is hashed with Python's own hash of each string (cached on
 * the string object: no encoding, no copy), mixed into 64 bits: the low 32 are the
 * fingerprint, the high 32 choose the set. A new triple is reported as already logged only
 * when a fresh entry of its set has the same 32-bit fingerprint (at most 16 / 2**32).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define WAYS 16
#define TICKS 128     /* stamp ticks per window: an entry expires up to window/128 early */
#define MAX_STAMP 255
#define FIRST_TICK (TICKS + 1)

typedef struct {
    PyObject_HEAD
    double window;
    Py_ssize_t slots;
    Py_ssize_t sets;
    Py_ssize_t entries;
    uint32_t *fingerprints;
    uint8_t *stamps;
    double base;   /* monotonic seconds at tick 0 of the current frame */
    double inv;    /* ticks per second (0: an infinite window, the tick never moves) */
    double shift;  /* seconds added to the clock (tests) */
} Table;

static double
monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t
fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

/* The current tick: 1 at the frame's start (0 is an empty way, always expired). */
static long
current_tick(Table *self)
{
    double x = (monotonic_seconds() + self->shift - self->base) * self->inv;
    if (!(x > 0)) {
        x = 0;
    }
    if (x > 1e15) { /* a window of nanoseconds, years on: far past a byte, safe to convert */
        x = 1e15;
    }
    return (long)x + 1;
}

/* Move the frame so the tick fits a byte again: fresh stamps keep their age, expired ones
 * land on 0 or 1 (still expired at tick TICKS + 1). */
static long
rebase(Table *self, long tick)
{
    long shift = tick - FIRST_TICK;
    uint8_t table[256];
    for (int s = 0; s < 256; s++) {
        long moved = (long)s - shift;
        table[s] = (uint8_t)(moved > 0 ? moved : 0);
    }
    for (Py_ssize_t i = 0; i < self->entries; i++) {
        self->stamps[i] = table[self->stamps[i]];
    }
    self->base += (double)shift / self->inv;
    return FIRST_TICK;
}

static int
Table_init(Table *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"window_seconds", "slots", NULL};
    double window;
    Py_ssize_t slots = 1 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "d|n", kwlist, &window, &slots)) {
        return -1;
    }
    if (isnan(window)) {
        PyErr_SetString(PyExc_ValueError, "window_seconds must be a number");
        return -1;
    }
    if (slots < 1) {
        PyErr_Format(PyExc_ValueError, "slots must be positive, got %zd", slots);
        return -1;
    }
    self->window = window;
    self->slots = slots;
    self->sets = slots * 8 / (5 * WAYS);
    if (self->sets < 1) {
        self->sets = 1;
    }
    self->entries = self->sets * WAYS;
    PyMem_Free(self->fingerprints);
    PyMem_Free(self->stamps);
    self->fingerprints = PyMem_Calloc((size_t)self->entries, sizeof(uint32_t));
    self->stamps = PyMem_Calloc((size_t)self->entries, 1);
    if (self->fingerprints == NULL || self->stamps == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->base = monotonic_seconds();
    self->inv = (window > 0 && isfinite(window)) ? TICKS / window : 0.0;
    self->shift = 0.0;
    return 0;
}

static void
Table_dealloc(Table *self)
{
    PyMem_Free(self->fingerprints);
    PyMem_Free(self->stamps);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Table_first_in_window(Table *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "first_in_window(flag, key, variant)");
        return NULL;
    }
    if (self->fingerprints == NULL || self->stamps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the table was not initialized");
        return NULL;
    }
    if (!(self->window > 0)) {
        Py_RETURN_TRUE; /* a window of 0 never deduplicates */
    }
    Py_hash_t h1 = PyObject_Hash(args[0]);
    Py_hash_t h2 = PyObject_Hash(args[1]);
    Py_hash_t h3 = PyObject_Hash(args[2]);
    if (h1 == -1 || h2 == -1 || h3 == -1) {
        return NULL;
    }
    uint64_t h = fmix64((uint64_t)h1 * 0x9e3779b97f4a7c15ULL
                        ^ fmix64((uint64_t)h2 + 0x632be59bd9b4e019ULL)
                        ^ ((uint64_t)h3 * 0xbf58476d1ce4e5b9ULL + 1));
    uint32_t fingerprint = (uint32_t)h;
    if (fingerprint == 0) {
        fingerprint = 1;
    }
    Py_ssize_t first = (Py_ssize_t)((h >> 32) % (uint64_t)self->sets) * WAYS;
    uint32_t *fps = self->fingerprints + first;
    uint8_t *stamps = self->stamps + first;
    long tick = current_tick(self);
    if (self->inv > 0 && tick > MAX_STAMP) {
        tick = rebase(self, tick);
    }
    int way = -1;
    for (int i = 0; i < WAYS; i++) {
        if (fps[i] == fingerprint) {
            if (stamps[i] != 0 && tick - stamps[i] < TICKS) {
                Py_RETURN_FALSE; /* logged within the window */
            }
            way = i; /* there but expired: logged again, stamped in place */
            break;
        }
    }
    if (way < 0) { /* the first expired (or empty) way, else the last one */
        way = WAYS - 1;
        for (int i = 0; i < WAYS; i++) {
            if (stamps[i] == 0 || tick - stamps[i] >= TICKS) {
                way = i;
                break;
            }
        }
        fps[way] = fingerprint;
    }
    stamps[way] = (uint8_t)tick;
    Py_RETURN_TRUE;
}

static PyObject *
Table_advance(Table *self, PyObject *arg)
{
    double seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    self->shift += seconds;
    Py_RETURN_NONE;
}

static PyObject *
Table_after_fork_in_child(Table *self, PyObject *Py_UNUSED(ignored))
{
    Py_RETURN_NONE; /* nothing to renew: no lock, no thread */
}

static PyObject *
Table_memory_bytes(Table *self, void *closure)
{
    return PyLong_FromSsize_t(self->entries * 5);
}

static PyObject *
Table_window(Table *self, void *closure)
{
    return PyFloat_FromDouble(self->window);
}

static PyObject *
Table_slots(Table *self, void *closure)
{
    return PyLong_FromSsize_t(self->slots);
}

static PyObject *
Table_sets(Table *self, void *closure)
{
    return PyLong_FromSsize_t(self->sets);
}

static PyObject *
Table_entries(Table *self, void *closure)
{
    return PyLong_FromSsize_t(self->entries);
}

static PyMethodDef Table_methods[] = {
    {"first_in_window", (PyCFunction)(void (*)(void))Table_first_in_window, METH_FASTCALL,
     "True (log it) unless this flag, key and variant was logged within the window."},
    {"advance", (PyCFunction)Table_advance, METH_O, "Move this table's clock on (tests)."},
    {"after_fork_in_child", (PyCFunction)Table_after_fork_in_child, METH_NOARGS,
     "Nothing to do: the table holds no lock and no thread."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Table_getset[] = {
    {"memory_bytes", (getter)Table_memory_bytes, NULL, "the table's bytes", NULL},
    {"window", (getter)Table_window, NULL, "the window in seconds", NULL},
    {"slots", (getter)Table_slots, NULL, "the budget, in 8-byte slots", NULL},
    {"sets", (getter)Table_sets, NULL, "sets of 16 ways", NULL},
    {"entries", (getter)Table_entries, NULL, "sets x 16", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flagwarden._dedup.Table",
    .tp_doc = "The exposure dedup table (see flagwarden.telemetry.dedup), compiled.",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_getset = Table_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "flagwarden._dedup", "The compiled exposure dedup table.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__dedup(void)
{
    if (PyType_Ready(&TableType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
