/* Bucketing of Python str keys, compiled: the inside mask of flagwarden.governance.masks for a
 * chunk of keys that are all str (a list, or a pandas object column's values), with no Arrow
 * conversion and no bytes object per ASCII key.
 *
 * Each key's bucket is murmur3_x86_32(utf8(prefix + key), seed 0) % 100000, continued from
 * the hash state after the prefix (flagwarden.governance.murmur.prefix_state), exactly as the
 * numba kernels and mmh3 compute it. An ASCII str is hashed from its own buffer; any other str
 * is encoded to UTF-8 once, into a temporary that is freed at once (nothing is cached on the
 * key). An empty str or None is missing (outside the stage), as everywhere in assign. A chunk
 * holding anything else (checked before any key is hashed), or a str that cannot be encoded
 * (a lone surrogate), gives None: the caller reads it the slower way, which decides what such
 * keys mean.
 *
 * Built when a compiler is there (an optional extension); without it the chunk goes through
 * Arrow and the numba kernels, with the same answers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BUCKETS 100000u

static inline uint32_t
rotl32(uint32_t x, int r)
{
    return (x << r) | (x >> (32 - r));
}

static inline uint32_t
mix_k(uint32_t k)
{
    k *= 0xcc9e2d51u;
    k = rotl32(k, 15);
    return k * 0x1b873593u;
}

static inline uint32_t
mix_h(uint32_t h, uint32_t k)
{
    h ^= mix_k(k);
    h = rotl32(h, 13);
    return h * 5u + 0xe6546b64u;
}

/* murmur3_x86_32 of prefix + data[0:n], the prefix given as its state: h after its whole
 * blocks, its leftover bytes (carry, little-endian) and their count (fill), its length. */
static uint32_t
hash_rest(uint32_t h, uint32_t carry, int fill, Py_ssize_t plen, const unsigned char *data,
          Py_ssize_t n)
{
    Py_ssize_t i = 0;
    uint32_t k = carry;
    while (fill > 0 && fill < 4 && i < n) {
        k |= (uint32_t)data[i++] << (8 * fill);
        fill++;
    }
    if (fill == 4) {
        h = mix_h(h, k);
        k = 0;
        fill = 0;
    }
    if (fill == 0) {
        for (; i + 4 <= n; i += 4) {
            uint32_t block;
            memcpy(&block, data + i, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            block = __builtin_bswap32(block);
#endif
            h = mix_h(h, block);
        }
        k = 0;
        for (; i < n; i++) {
            k |= (uint32_t)data[i] << (8 * fill);
            fill++;
        }
    }
    if (fill > 0)
        h ^= mix_k(k);
    h ^= (uint32_t)(plen + n);
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

PyDoc_STRVAR(strings_doc,
"strings(keys, h0, carry, fill, prefix_len, limit, out) -> (treated, missing) | None\n\n"
"Fill ``out`` (a writable buffer of one byte per key, numpy bool) with whether each key's\n"
"bucket is below ``limit``; an empty key or None is missing (outside). ``keys``: a list or\n"
"any sequence. None when a key is neither str nor None, or cannot be encoded: ``out`` is\n"
"then undefined.");

static PyObject *
strings(PyObject *module, PyObject *args)
{
    PyObject *keys;
    unsigned long long h0, carry;
    int fill;
    Py_ssize_t plen;
    long long limit;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "OKKinLw*", &keys, &h0, &carry, &fill, &plen, &limit, &out))
        return NULL;
    if (fill < 0 || fill > 3 || plen < 0) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "not a prefix state");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(keys, "keys must be a sequence");
    if (seq == NULL) {
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (out.itemsize != 1 || out.len < n) {
        Py_DECREF(seq);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "out must hold one byte per key, as many as keys");
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t j = 0; j < n; j++) {  /* all str or None, or nothing is hashed */
        if (!PyUnicode_CheckExact(items[j]) && items[j] != Py_None) {
            Py_DECREF(seq);
            PyBuffer_Release(&out);
            Py_RETURN_NONE;
        }
    }
    unsigned char *mask = (unsigned char *)out.buf;
    long long treated = 0, missing = 0;
    int fallback = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *key = items[j];
        if (key == Py_None) {
            mask[j] = 0;
            missing++;
            continue;
        }
        if (PyUnicode_READY(key) < 0) {
            PyErr_Clear();
            fallback = 1;
            break;
        }
        Py_ssize_t len = PyUnicode_GET_LENGTH(key);
        if (len == 0) {
            mask[j] = 0;
            missing++;
            continue;
        }
        uint32_t h;
        if (PyUnicode_IS_ASCII(key)) {
            h = hash_rest((uint32_t)h0, (uint32_t)carry, fill, plen,
                          (const unsigned char *)PyUnicode_DATA(key), len);
        }
        else {
            PyObject *utf8 = PyUnicode_AsUTF8String(key);
            if (utf8 == NULL) {
                PyErr_Clear();
                fallback = 1;
                break;
            }
            h = hash_rest((uint32_t)h0, (uint32_t)carry, fill, plen,
                          (const unsigned char *)PyBytes_AS_STRING(utf8),
                          PyBytes_GET_SIZE(utf8));
            Py_DECREF(utf8);
        }
        if ((long long)(h % BUCKETS) < limit) {
            mask[j] = 1;
            treated++;
        }
        else {
            mask[j] = 0;
        }
    }
    Py_DECREF(seq);
    PyBuffer_Release(&out);
    if (fallback)
        Py_RETURN_NONE;
    return Py_BuildValue("(LL)", treated, missing);
}

static PyMethodDef methods[] = {
    {"strings", strings, METH_VARARGS, strings_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "flagwarden._murmur",
    "Bucketing of str keys, compiled (see flagwarden.governance.masks).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__murmur(void)
{
    return PyModule_Create(&module);
}
