/*
 * logplex.codecs._syslogscan: cut the octet-counted syslog frames of one read (RFC 6587, RFC 5424)
 * in the common shape of Logplex's input layout, in one pass at C speed.
 *
 * scan_common(data: bytes, max_frame_bytes: int, start: int = 0, /)
 *     -> tuple[int, list[bytes], list[int], list[bytes], list[bytes], int]
 *
 * Walks the frames from offset `start` of `data` by their MSG-LEN and returns
 * (end, stamps, fractions, keys, msgs, flags) for the frames in the common shape:
 *
 *     MSG-LEN SP "<" PRI "1 " SECOND [ "." DIGITS ] ZONE SP HOST SP APP SP PROCID SP MSGID
 *         SP ( "-" | SD-ELEMENT... ) [ SP MSG ]
 *
 * MSG-LEN is 1..5 digits without a leading zero, at most 10240 and `max_frame_bytes`; PRI
 * is 1..3 digits; SECOND is 19 bytes and ZONE one or more, neither with a space; HOST, APP,
 * PROCID and MSGID are non-empty and space-free; STRUCTURED-DATA is "-" or elements "[...]"
 * (delimited only: quoted values may hold "]" and backslash escapes); with MSGID "-" it may
 * also be absent, MSG following MSGID (Heroku's drain layout). Per frame it gives the stamp
 * `<PRI>1 SECOND` + `.` + DIGITS with every digit turned to 0 + ZONE (the header up to the
 * TIMESTAMP's end, without its fraction), the fraction in microseconds (the first six
 * digits, as RFC 5424 TIME-SECFRAC reads), the key `HOST APP PROCID MSGID STRUCTURED-DATA`
 * and the MSG (everything after the key and a space, up to the frame's end). Consecutive
 * frames with equal stamps (or keys) share one bytes object. `end` is the offset just past
 * the last frame taken: the scan stops before the first frame that is incomplete or not in
 * this shape, and the caller reads the rest.
 * flags: bit 0 set when some MSG holds an LF, bit 1 when some MSG starts with a UTF-8 BOM.
 *
 * This module only delimits. The caller validates every distinct stamp and key with the
 * input-layout parser before it uses a frame (logplex/ingest/syslog.py). Every index is
 * checked against the frame's end before it is read: the input is untrusted.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define COUNT_MAX 10240
#define COUNT_DIGITS_MAX 5
#define SECOND_BYTES 19
#define FRACTION_DIGITS 6
#define STAMP_BYTES_MAX 64 /* "<191>1 " + SECOND + "." + digits + ZONE; longer: not common */
static const unsigned char BOM[] = {0xEF, 0xBB, 0xBF};

#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')

/* A bytes object holding `size` bytes at `bytes`, or the previous one when they are equal. */
static PyObject *
shared_bytes(const char *bytes, Py_ssize_t size, PyObject **previous)
{
    if (*previous != NULL && PyBytes_GET_SIZE(*previous) == size &&
        memcmp(PyBytes_AS_STRING(*previous), bytes, (size_t)size) == 0) {
        Py_INCREF(*previous);
        return *previous;
    }
    PyObject *made = PyBytes_FromStringAndSize(bytes, size);
    if (made == NULL) {
        return NULL;
    }
    Py_XDECREF(*previous);
    Py_INCREF(made);
    *previous = made;
    return made;
}

/* The offset just past the SD-ELEMENTs starting at `at` (a "["), or -1 when one is not
 * closed before `end`. Only delimits: inside a quoted PARAM-VALUE a backslash takes the
 * next byte with it and "]" does not close; the caller's parser validates the rest. */
static Py_ssize_t
structured_data_end(const unsigned char *bytes, Py_ssize_t at, Py_ssize_t end)
{
    while (at < end && bytes[at] == '[') {
        int quoted = 0;
        at++;
        while (at < end) {
            unsigned char c = bytes[at];
            if (quoted && c == '\\') {
                at += 2;
                continue;
            }
            if (c == '"') {
                quoted = !quoted;
            }
            else if (c == ']' && !quoted) {
                break;
            }
            at++;
        }
        if (at >= end) {
            return -1;
        }
        at++; /* past "]" */
    }
    return at;
}

/* Append `item` to `list` and drop the caller's reference; -1 on error. */
static int
append_stolen(PyObject *list, PyObject *item)
{
    if (item == NULL) {
        return -1;
    }
    int failed = PyList_Append(list, item);
    Py_DECREF(item);
    return failed;
}

static PyObject *
scan_common(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "scan_common(data, max_frame_bytes, start=0) takes 2 or 3 arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_common: data must be bytes");
        return NULL;
    }
    long max_frame_bytes = PyLong_AsLong(args[1]);
    if (max_frame_bytes == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_frame_bytes > COUNT_MAX) {
        max_frame_bytes = COUNT_MAX;
    }
    const char *data = PyBytes_AS_STRING(args[0]);
    const unsigned char *bytes = (const unsigned char *)data;
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t position = 0;
    if (nargs == 3) {
        position = PyLong_AsSsize_t(args[2]);
        if (position == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (position < 0 || position > size) {
            PyErr_SetString(PyExc_ValueError, "scan_common: start is outside data");
            return NULL;
        }
    }

    PyObject *stamps = PyList_New(0);
    PyObject *fractions = PyList_New(0);
    PyObject *keys = PyList_New(0);
    PyObject *msgs = PyList_New(0);
    PyObject *last_stamp = NULL;
    PyObject *last_key = NULL;
    long flags = 0;
    if (stamps == NULL || fractions == NULL || keys == NULL || msgs == NULL) {
        goto error;
    }

    while (position < size) {
        /* MSG-LEN SP: 1..5 digits, no leading zero, within the limits */
        Py_ssize_t at = position;
        long length = 0;
        while (at < size && at - position <= COUNT_DIGITS_MAX && IS_DIGIT(bytes[at])) {
            length = length * 10 + (bytes[at] - '0');
            at++;
        }
        Py_ssize_t digits = at - position;
        if (digits == 0 || digits > COUNT_DIGITS_MAX || bytes[position] == '0') {
            break;
        }
        if (at >= size || bytes[at] != ' ' || length > max_frame_bytes) {
            break;
        }
        Py_ssize_t start = at + 1;
        if (length > size - start) {
            break; /* still arriving */
        }
        Py_ssize_t end = start + length;

        /* "<" PRI ">1 " */
        at = start;
        if (at >= end || bytes[at] != '<') {
            break;
        }
        at++;
        Py_ssize_t pri_start = at;
        while (at < end && at - pri_start <= 3 && IS_DIGIT(bytes[at])) {
            at++;
        }
        Py_ssize_t pri_digits = at - pri_start;
        if (pri_digits < 1 || pri_digits > 3) {
            break;
        }
        if (end - at < 3 || bytes[at] != '>' || bytes[at + 1] != '1' || bytes[at + 2] != ' ') {
            break;
        }
        at += 3;

        /* SECOND [ "." DIGITS ] ZONE SP: the stamp is the header to here, digits zeroed */
        if (end - at < SECOND_BYTES + 2) {
            break;
        }
        if (memchr(data + at, ' ', SECOND_BYTES) != NULL) {
            break;
        }
        at += SECOND_BYTES;
        const char *stamp_space = memchr(data + at, ' ', (size_t)(end - at));
        if (stamp_space == NULL) {
            break;
        }
        Py_ssize_t stamp_end = (Py_ssize_t)(stamp_space - data);
        Py_ssize_t stamp_bytes = stamp_end - start;
        if (stamp_bytes > STAMP_BYTES_MAX) {
            break;
        }
        char stamp[STAMP_BYTES_MAX];
        memcpy(stamp, data + start, (size_t)stamp_bytes);
        long fraction = 0;
        Py_ssize_t zone_start = at;
        if (bytes[at] == '.') {
            Py_ssize_t digit_at = at + 1;
            while (digit_at < stamp_end && IS_DIGIT(bytes[digit_at])) {
                if (digit_at - at <= FRACTION_DIGITS) {
                    fraction = fraction * 10 + (bytes[digit_at] - '0');
                }
                stamp[digit_at - start] = '0';
                digit_at++;
            }
            for (Py_ssize_t digits = digit_at - at - 1; digits < FRACTION_DIGITS; digits++) {
                fraction *= 10; /* ".5" is 500000 microseconds */
            }
            zone_start = digit_at;
        }
        if (zone_start == stamp_end) {
            break; /* no ZONE */
        }
        at = stamp_end + 1;

        /* HOST SP APP SP PROCID SP MSGID SP, each non-empty and space-free */
        Py_ssize_t key_start = at;
        int key_ok = 1;
        for (int field = 0; field < 4; field++) {
            Py_ssize_t field_start = at;
            const char *space = memchr(data + at, ' ', (size_t)(end - at));
            at = space == NULL ? end : (Py_ssize_t)(space - data);
            if (at == field_start || at >= end) {
                key_ok = 0; /* an empty field, or no space after it */
                break;
            }
            at++;
        }
        if (!key_ok || at >= end) {
            break;
        }
        /* STRUCTURED-DATA: "-", or elements; with MSGID "-" and neither, no SD at all */
        Py_ssize_t key_end;
        Py_ssize_t msg_start;
        if (bytes[at] == '-' && (at + 1 == end || bytes[at + 1] == ' ')) {
            key_end = at + 1;
            msg_start = key_end == end ? end : key_end + 1;
        }
        else if (bytes[at] == '[') {
            key_end = structured_data_end(bytes, at, end);
            if (key_end < 0 || (key_end < end && bytes[key_end] != ' ')) {
                break;
            }
            msg_start = key_end == end ? end : key_end + 1;
        }
        else if (bytes[at - 2] == '-' && bytes[at - 3] == ' ') {
            key_end = at - 1; /* Heroku's drain layout: MSG right after a "-" MSGID */
            msg_start = at;
        }
        else {
            break;
        }

        if (memchr(data + msg_start, '\n', (size_t)(end - msg_start)) != NULL) {
            flags |= 1;
        }
        if (end - msg_start >= 3 && memcmp(data + msg_start, BOM, 3) == 0) {
            flags |= 2;
        }
        if (append_stolen(stamps, shared_bytes(stamp, stamp_bytes, &last_stamp)) < 0 ||
            append_stolen(fractions, PyLong_FromLong(fraction)) < 0 ||
            append_stolen(keys, shared_bytes(data + key_start, key_end - key_start, &last_key)) < 0 ||
            append_stolen(msgs, PyBytes_FromStringAndSize(data + msg_start, end - msg_start)) < 0) {
            goto error;
        }
        position = end;
    }
    Py_XDECREF(last_stamp);
    Py_XDECREF(last_key);
    return Py_BuildValue("(nNNNNl)", position, stamps, fractions, keys, msgs, flags);

error:
    Py_XDECREF(last_stamp);
    Py_XDECREF(last_key);
    Py_XDECREF(stamps);
    Py_XDECREF(fractions);
    Py_XDECREF(keys);
    Py_XDECREF(msgs);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_common", (PyCFunction)(void (*)(void))scan_common, METH_FASTCALL,
     "scan_common(data, max_frame_bytes, start=0, /)\n"
     "    -> (end, stamps, fractions, keys, msgs, flags)\n\n"
     "Cut the octet-counted frames from data[start:] that have the common input shape."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot slots[] = {
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "logplex.codecs._syslogscan",
    .m_doc = "Cut octet-counted syslog frames of the common input shape (C).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__syslogscan(void)
{
    return PyModuleDef_Init(&module_def);
}
