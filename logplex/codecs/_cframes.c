/*
 * logplex.codecs._cframes: the octet-counted drain frames of a batch, at C speed
 * (DESIGN 5.1 and 5.2; the pure-Python twin is drain_frames.frames_with_headers_python).
 *
 * frames_with_headers(messages: list, parts_of, prefix_of, /) -> list[bytes] | None
 *
 * For each record (ts_us, pri, source, ps, msg) it writes
 *
 *     LEN SP head TS-PREFIX MICROS "+00:00" middle MSG LF
 *
 * where (head, middle, fixed) = parts_of(pri, source, ps), TS-PREFIX = prefix_of(ts_us //
 * 1000) (`YYYY-MM-DDTHH:MM:SS.mmm`), MICROS the three digits of ts_us % 1000, and LEN =
 * fixed + len(MSG), the byte count after LEN SP. parts_of is called once per distinct ps
 * within a run of equal (pri, source), prefix_of once per change of millisecond; both are
 * Python callables that validate and may raise, and their exceptions propagate.
 *
 * Anything unusual returns None before a frame is written, so the caller runs the
 * Python twin, which gives the same frames or raises the same error: a record that is not
 * a 5-tuple of (int, int, bytes, bytes, bytes), a ts_us outside 0..2**62, a PRI outside
 * 0..2**30, parts that are not (bytes, bytes, int), or a prefix that is not bytes.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define TS_US_MAX (1LL << 62)
#define PRI_MAX (1L << 30)

static const char UTC[] = "+00:00";
#define UTC_BYTES 6

/* A non-negative long long from an exact int within [0, limit), or -1. */
static long long
bounded_int(PyObject *value, long long limit)
{
    if (!PyLong_CheckExact(value)) {
        return -1;
    }
    int overflow = 0;
    long long result = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || result < 0 || result >= limit) {
        PyErr_Clear();
        return -1;
    }
    return result;
}

/* Decimal digits of `value` (>= 0) written at the end of `out` (size 24); their start. */
static char *
decimal(long long value, char *out_end)
{
    char *at = out_end;
    do {
        *--at = (char)('0' + value % 10);
        value /= 10;
    } while (value > 0);
    return at;
}

static PyObject *
frames_with_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "frames_with_headers(messages: list, parts_of, prefix_of)");
        return NULL;
    }
    PyObject *messages = args[0];
    PyObject *parts_of = args[1];
    PyObject *prefix_of = args[2];
    Py_ssize_t count = PyList_GET_SIZE(messages);

    /* First pass: the records' shapes, so that an unusual one costs no work done twice. */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(messages, i);
        if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != 5 ||
            bounded_int(PyTuple_GET_ITEM(record, 0), TS_US_MAX) < 0 ||
            bounded_int(PyTuple_GET_ITEM(record, 1), PRI_MAX) < 0 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(record, 2)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(record, 3)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(record, 4))) {
            Py_RETURN_NONE;
        }
    }

    PyObject *frames = PyList_New(count);
    PyObject *by_ps = PyDict_New(); /* ps -> parts, for the current (pri, source) */
    PyObject *ts_prefix = NULL;
    PyObject *last_source = NULL; /* borrowed from the records */
    long long last_pri = -1;
    long long last_ms = -1;
    if (frames == NULL || by_ps == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(messages, i);
        long long ts_us = bounded_int(PyTuple_GET_ITEM(record, 0), TS_US_MAX);
        long long pri = bounded_int(PyTuple_GET_ITEM(record, 1), PRI_MAX);
        PyObject *source = PyTuple_GET_ITEM(record, 2);
        PyObject *ps = PyTuple_GET_ITEM(record, 3);
        PyObject *msg = PyTuple_GET_ITEM(record, 4);

        if (pri != last_pri || last_source == NULL ||
            (source != last_source &&
             (PyBytes_GET_SIZE(source) != PyBytes_GET_SIZE(last_source) ||
              memcmp(PyBytes_AS_STRING(source), PyBytes_AS_STRING(last_source),
                     (size_t)PyBytes_GET_SIZE(source)) != 0))) {
            PyDict_Clear(by_ps);
            last_pri = pri;
            last_source = source;
        }
        PyObject *parts = PyDict_GetItemWithError(by_ps, ps); /* borrowed */
        if (parts == NULL) {
            if (PyErr_Occurred()) {
                goto error;
            }
            PyObject *made = PyObject_CallFunctionObjArgs(
                parts_of, PyTuple_GET_ITEM(record, 1), source, ps, NULL);
            if (made == NULL) {
                goto error;
            }
            if (!PyTuple_CheckExact(made) || PyTuple_GET_SIZE(made) != 3 ||
                !PyBytes_CheckExact(PyTuple_GET_ITEM(made, 0)) ||
                !PyBytes_CheckExact(PyTuple_GET_ITEM(made, 1)) ||
                bounded_int(PyTuple_GET_ITEM(made, 2), PRI_MAX) < 0) {
                Py_DECREF(made);
                goto unusual;
            }
            int stored = PyDict_SetItem(by_ps, ps, made);
            Py_DECREF(made); /* the dict holds it: borrowed from here on, like a hit */
            if (stored < 0) {
                goto error;
            }
            parts = made;
        }
        PyObject *head = PyTuple_GET_ITEM(parts, 0);
        PyObject *middle = PyTuple_GET_ITEM(parts, 1);
        long long fixed = bounded_int(PyTuple_GET_ITEM(parts, 2), PRI_MAX);

        long long ts_ms = ts_us / 1000;
        if (ts_ms != last_ms) {
            PyObject *ms = PyLong_FromLongLong(ts_ms);
            if (ms == NULL) {
                goto error;
            }
            PyObject *prefix = PyObject_CallOneArg(prefix_of, ms);
            Py_DECREF(ms);
            if (prefix == NULL) {
                goto error;
            }
            if (!PyBytes_CheckExact(prefix)) {
                Py_DECREF(prefix);
                goto unusual;
            }
            Py_XSETREF(ts_prefix, prefix);
            last_ms = ts_ms;
        }

        long long length = fixed + (long long)PyBytes_GET_SIZE(msg);
        char digits[24];
        char *length_at = decimal(length, digits + sizeof digits);
        Py_ssize_t length_bytes = (Py_ssize_t)(digits + sizeof digits - length_at);
        int micros = (int)(ts_us % 1000);
        Py_ssize_t head_bytes = PyBytes_GET_SIZE(head);
        Py_ssize_t prefix_bytes = PyBytes_GET_SIZE(ts_prefix);
        Py_ssize_t middle_bytes = PyBytes_GET_SIZE(middle);
        Py_ssize_t msg_bytes = PyBytes_GET_SIZE(msg);
        Py_ssize_t total = length_bytes + 1 + head_bytes + prefix_bytes + 3 + UTC_BYTES +
                           middle_bytes + msg_bytes + 1;
        PyObject *frame = PyBytes_FromStringAndSize(NULL, total);
        if (frame == NULL) {
            goto error;
        }
        char *out = PyBytes_AS_STRING(frame);
        memcpy(out, length_at, (size_t)length_bytes);
        out += length_bytes;
        *out++ = ' ';
        memcpy(out, PyBytes_AS_STRING(head), (size_t)head_bytes);
        out += head_bytes;
        memcpy(out, PyBytes_AS_STRING(ts_prefix), (size_t)prefix_bytes);
        out += prefix_bytes;
        *out++ = (char)('0' + micros / 100);
        *out++ = (char)('0' + micros / 10 % 10);
        *out++ = (char)('0' + micros % 10);
        memcpy(out, UTC, UTC_BYTES);
        out += UTC_BYTES;
        memcpy(out, PyBytes_AS_STRING(middle), (size_t)middle_bytes);
        out += middle_bytes;
        memcpy(out, PyBytes_AS_STRING(msg), (size_t)msg_bytes);
        out += msg_bytes;
        *out = '\n';
        PyList_SET_ITEM(frames, i, frame);
    }
    Py_XDECREF(ts_prefix);
    Py_DECREF(by_ps);
    return frames;

unusual:
    Py_XDECREF(ts_prefix);
    Py_XDECREF(by_ps);
    Py_XDECREF(frames);
    Py_RETURN_NONE;

error:
    Py_XDECREF(ts_prefix);
    Py_XDECREF(by_ps);
    Py_XDECREF(frames);
    return NULL;
}

static PyMethodDef methods[] = {
    {"frames_with_headers", (PyCFunction)(void (*)(void))frames_with_headers, METH_FASTCALL,
     "frames_with_headers(messages, parts_of, prefix_of, /) -> list[bytes] | None\n\n"
     "The octet-counted drain frames of a batch; None when a record is unusual."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot slots[] = {
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "logplex.codecs._cframes",
    .m_doc = "The octet-counted drain frames of a batch (C).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__cframes(void)
{
    return PyModuleDef_Init(&module_def);
}
