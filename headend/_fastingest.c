/* The ingest's hot path in C: MQTT PUBLISH frames of reading uplinks -> body dicts.
 *
 * scan(buf, pos, max_packet, units, bodies, ids) -> position
 *
 * Walks the complete MQTT v5 frames of ``buf`` (a bytearray) from ``pos`` and
 * takes every leading frame that is a QoS 0/1 PUBLISH on
 * ``urja/v1/<meter>/up/reading`` whose payload is a reading uplink this code
 * is sure about: it appends the decoded body (the dict
 * ``messages.decode_uplink`` returns, ``kind`` included) to ``bodies`` and
 * the packet id of a QoS 1 frame to ``ids``.  It stops at the first frame it
 * does not take -- incomplete, not a PUBLISH, another topic, a payload
 * outside the accepted subset, a meter missing from ``units`` (meter id ->
 * unit) or counting in another unit -- and returns that frame's position.
 *
 * It never rejects and never raises for bad input: whatever it does not take
 * is left to the Python reference (headend.mqtt_fast.parse_frame,
 * headend.fastdecode, IngestWorker.classify), which decides and names the
 * error.  So this file may only *accept*, and everything it accepts must be
 * exactly what the reference accepts, decoded to the same value:
 *
 * - the payload is at most 1024 bytes (no more items than cbor.MAX_ITEMS);
 * - it is one definite-length map of fewer than 24 pairs with text keys of
 *   fewer than 24 bytes, no duplicate key, and nothing after it;
 * - every head is in its shortest form (the reference encoder's output);
 * - values: v == FORMAT (1); m == the topic's meter; s, t unsigned ints;
 *   iv, cum ints; u a text equal to the meter's unit; r an array of arrays
 *   of 6 items, each an int or null; any other key holds an int, a text,
 *   null, true, false or an array of those (nested at most 4 deep);
 * - ints are major types 0/1 (-2**64 .. 2**64-1, the reference's range).
 *
 * headend/tests/test_fastscan.py checks it against the reference frame by
 * frame (hypothesis, valid, mutated and hostile frames, any split).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define FORMAT 1
#define MAX_PAYLOAD 1024
#define MAX_PLAIN_DEPTH 4
#define RECORD_LEN 6

static const char PREFIX[] = "urja/v1/";
static const char SUFFIX[] = "/up/reading";
#define PREFIX_LEN 8
#define SUFFIX_LEN 11

/* required keys, in the order of the bits in `seen` */
enum { K_V, K_M, K_S, K_T, K_IV, K_U, K_CUM, K_R, K_COUNT };
static const char *const KEY_NAMES[K_COUNT] = {"v", "m", "s", "t", "iv", "u", "cum", "r"};
static PyObject *KEYS[K_COUNT];
static PyObject *KIND_KEY, *READING, *ZERO;

/* A result that is NULL without a Python exception means "not taken". */
#define NOT_TAKEN NULL

/* One CBOR head in its shortest form: major type and argument; -1 if not. */
static int
head(const uint8_t *b, Py_ssize_t *p, Py_ssize_t end, int *major, uint64_t *arg)
{
    if (*p >= end)
        return -1;
    uint8_t ib = b[(*p)++];
    int ai = ib & 31, n;
    *major = ib >> 5;
    if (ai < 24) {
        *arg = (uint64_t)ai;
        return 0;
    }
    switch (ai) {
    case 24: n = 1; break;
    case 25: n = 2; break;
    case 26: n = 4; break;
    case 27: n = 8; break;
    default: return -1;  /* reserved or indefinite */
    }
    if (*p + n > end)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | b[*p + i];
    *p += n;
    if ((n == 1 && v < 24) || (n == 2 && v < 0x100) || (n == 4 && v < 0x10000)
        || (n == 8 && v < 0x100000000ULL))
        return -1;  /* not the shortest form */
    *arg = v;
    return 0;
}

/* The int of a major 0/1 head. */
static PyObject *
int_of(int major, uint64_t arg)
{
    if (major == 0)
        return PyLong_FromUnsignedLongLong(arg);
    if (arg <= (uint64_t)INT64_MAX)
        return PyLong_FromLongLong(-1 - (long long)arg);
    PyObject *a = PyLong_FromUnsignedLongLong(arg), *r;
    if (a == NULL)
        return NULL;
    r = PyNumber_Invert(a);  /* ~a == -1 - a */
    Py_DECREF(a);
    return r;
}

/* A text item's str, or NOT_TAKEN when it is not valid UTF-8. */
static PyObject *
text_of(const uint8_t *b, Py_ssize_t start, uint64_t len)
{
    PyObject *s = PyUnicode_DecodeUTF8((const char *)b + start, (Py_ssize_t)len, "strict");
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        return NOT_TAKEN;
    }
    return s;
}

/* An int, text, null, true, false or array of those (an extra key's value). */
static PyObject *
plain_of(const uint8_t *b, Py_ssize_t *p, Py_ssize_t end, int depth)
{
    int major;
    uint64_t arg;
    if (head(b, p, end, &major, &arg) < 0)
        return NOT_TAKEN;
    switch (major) {
    case 0:
    case 1:
        return int_of(major, arg);
    case 3: {
        if (arg > (uint64_t)(end - *p))
            return NOT_TAKEN;
        PyObject *s = text_of(b, *p, arg);
        *p += (Py_ssize_t)arg;
        return s;
    }
    case 4: {
        if (depth >= MAX_PLAIN_DEPTH || arg > (uint64_t)(end - *p))
            return NOT_TAKEN;  /* every item takes at least one byte */
        PyObject *list = PyList_New((Py_ssize_t)arg);
        if (list == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < (Py_ssize_t)arg; i++) {
            PyObject *item = plain_of(b, p, end, depth + 1);
            if (item == NULL) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, i, item);
        }
        PyObject_GC_UnTrack(list);  /* atoms and untracked lists only: see reading_of */
        return list;
    }
    case 7:
        if (arg == 20 && b[*p - 1] == 0xf4)
            Py_RETURN_FALSE;
        if (arg == 21 && b[*p - 1] == 0xf5)
            Py_RETURN_TRUE;
        if (arg == 22 && b[*p - 1] == 0xf6)
            Py_RETURN_NONE;
        return NOT_TAKEN;  /* undefined, other simple values, floats */
    default:
        return NOT_TAKEN;  /* byte strings, maps, tags */
    }
}

/* ``r``: an array of records, each an array of RECORD_LEN ints or nulls. */
static PyObject *
records_of(const uint8_t *b, Py_ssize_t *p, Py_ssize_t end)
{
    int major;
    uint64_t n;
    if (head(b, p, end, &major, &n) < 0 || major != 4 || n > (uint64_t)(end - *p))
        return NOT_TAKEN;
    PyObject *rows = PyList_New((Py_ssize_t)n);
    if (rows == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)n; i++) {
        uint64_t width, arg;
        PyObject *row = NULL;
        if (head(b, p, end, &major, &width) < 0 || major != 4 || width != RECORD_LEN)
            goto not_taken;
        row = PyList_New(RECORD_LEN);
        if (row == NULL)
            goto fail;
        PyList_SET_ITEM(rows, i, row);
        for (Py_ssize_t j = 0; j < RECORD_LEN; j++) {
            PyObject *x;
            if (*p < end && b[*p] == 0xf6) {
                (*p)++;
                Py_INCREF(Py_None);
                x = Py_None;
            }
            else if (head(b, p, end, &major, &arg) < 0 || major > 1)
                goto not_taken;
            else if ((x = int_of(major, arg)) == NULL)
                goto fail;
            PyList_SET_ITEM(row, j, x);
        }
        PyObject_GC_UnTrack(row);
    }
    PyObject_GC_UnTrack(rows);
    return rows;
not_taken:
fail:
    Py_DECREF(rows);
    return NULL;
}

/* A text item whose bytes are ``want``: a new reference to ``obj`` (the str already
 * holding them: the topic's meter, the registry's unit), else NOT_TAKEN. */
static PyObject *
same_text(const uint8_t *b, Py_ssize_t *p, Py_ssize_t end, const char *want, Py_ssize_t len,
          PyObject *obj)
{
    int major;
    uint64_t arg;
    if (head(b, p, end, &major, &arg) < 0 || major != 3 || arg != (uint64_t)len
        || len > end - *p || memcmp(b + *p, want, len) != 0)
        return NOT_TAKEN;
    *p += len;
    return Py_NewRef(obj);
}

static int
key_index(const uint8_t *k, uint64_t len)
{
    for (int i = 0; i < K_COUNT; i++)
        if (strlen(KEY_NAMES[i]) == len && memcmp(KEY_NAMES[i], k, len) == 0)
            return i;
    return -1;
}

/* The body dict of a reading payload, or NOT_TAKEN. */
static PyObject *
reading_of(const uint8_t *b, Py_ssize_t n, PyObject *meter, const uint8_t *mb,
           Py_ssize_t mlen, PyObject *unit)
{
    Py_ssize_t p = 0;
    int major;
    uint64_t pairs, arg;
    unsigned seen = 0;
    if (head(b, &p, n, &major, &pairs) < 0 || major != 5 || pairs >= 24)
        return NOT_TAKEN;
    PyObject *body = PyDict_New();
    if (body == NULL)
        return NULL;
    for (uint64_t i = 0; i < pairs; i++) {
        PyObject *key, *value = NOT_TAKEN;
        if (head(b, &p, n, &major, &arg) < 0 || major != 3 || arg >= 24
            || arg > (uint64_t)(n - p))
            goto not_taken;
        int k = key_index(b + p, arg);
        if (k >= 0) {
            if (seen & (1u << k))
                goto not_taken;  /* duplicate key: the reference decides */
            seen |= 1u << k;
            key = KEYS[k];
            Py_INCREF(key);
        }
        else if ((key = text_of(b, p, arg)) == NULL)
            goto fail_or_not_taken;
        p += (Py_ssize_t)arg;
        switch (k) {
        case K_V:
            if (head(b, &p, n, &major, &arg) == 0 && major == 0 && arg == FORMAT)
                value = PyLong_FromLong(FORMAT);
            break;
        case K_M:
            value = same_text(b, &p, n, (const char *)mb, mlen, meter);
            break;
        case K_S:
        case K_T:  /* >= 0: major type 0 only */
            if (head(b, &p, n, &major, &arg) == 0 && major == 0)
                value = PyLong_FromUnsignedLongLong(arg);
            break;
        case K_IV:
        case K_CUM:
            if (head(b, &p, n, &major, &arg) == 0 && major <= 1)
                value = int_of(major, arg);
            break;
        case K_U: {
            Py_ssize_t ulen;
            const char *ub = PyUnicode_AsUTF8AndSize(unit, &ulen);
            if (ub == NULL) {
                Py_DECREF(key);
                goto fail;
            }
            value = same_text(b, &p, n, ub, ulen, unit);
            break;
        }
        case K_R:
            value = records_of(b, &p, n);
            break;
        default: {
            int has = PyDict_Contains(body, key);
            if (has < 0) {
                Py_DECREF(key);
                goto fail;
            }
            if (!has)
                value = plain_of(b, &p, n, 1);
        }
        }
        if (value == NULL) {
            Py_DECREF(key);
            goto fail_or_not_taken;
        }
        int err = PyDict_SetItem(body, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (err < 0)
            goto fail;
    }
    if (p != n || seen != (1u << K_COUNT) - 1)
        goto not_taken;
    if (PyDict_SetItem(body, KIND_KEY, READING) < 0)
        goto fail;
    /* A body holds only ints, strs, None, bools and lists of those: no reference cycle
       can pass through it, so the cyclic GC need not walk it (CPython untracks such
       tuples by itself; its lists and dicts it cannot know about).  A batch keeps
       thousands of bodies alive until its commit: tracked, they cost the worker
       young and full collections (~0.6 us per reading, docs/SCALING.md).  The
       ingest only reads them; a dict re-tracks itself if a container is stored in it. */
    PyObject_GC_UnTrack(body);
    return body;
fail_or_not_taken:
not_taken:
fail:
    Py_DECREF(body);
    return NULL;
}

/* MQTT Variable Byte Integer at *p, below end; -1 if incomplete or malformed. */
static int
varint(const uint8_t *b, Py_ssize_t *p, Py_ssize_t end, Py_ssize_t *value)
{
    Py_ssize_t v = 0;
    for (int i = 0; i < 4; i++) {
        if (*p >= end)
            return -1;
        uint8_t byte = b[(*p)++];
        v |= (Py_ssize_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            *value = v;
            return 0;
        }
    }
    return -1;
}

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "scan(buf, pos, max_packet, units, bodies, ids) takes 6 arguments");
        return NULL;
    }
    PyObject *units = args[3], *bodies = args[4], *ids = args[5];
    if (!PyDict_Check(units) || !PyList_Check(bodies) || !PyList_Check(ids)) {
        PyErr_SetString(PyExc_TypeError, "scan: units must be a dict, bodies and ids lists");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_packet = PyLong_AsSsize_t(args[2]);
    if ((pos == -1 || max_packet == -1) && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *b = (const uint8_t *)view.buf;
    Py_ssize_t end = view.len;
    if (pos < 0 || pos > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan: pos outside the buffer");
        return NULL;
    }
    while (end - pos >= 2) {
        uint8_t first = b[pos];
        int qos = (first >> 1) & 3;
        Py_ssize_t p = pos + 1, length, props, packet_id = -1;
        if ((first >> 4) != 3 || qos > 1)
            break;
        if (varint(b, &p, end, &length) < 0 || length > max_packet || length > end - p)
            break;
        Py_ssize_t stop = p + length;
        if (stop - p < 2)
            break;
        Py_ssize_t tlen = (b[p] << 8) | b[p + 1];
        Py_ssize_t t0 = p + 2, t1 = t0 + tlen;
        if (t1 > stop)
            break;
        p = t1;
        if (qos) {
            if (stop - p < 2)
                break;
            packet_id = (b[p] << 8) | b[p + 1];
            p += 2;
        }
        if (varint(b, &p, stop, &props) < 0 || props > stop - p)
            break;
        p += props;
        if (stop - p > MAX_PAYLOAD || tlen <= PREFIX_LEN + SUFFIX_LEN
            || memcmp(b + t0, PREFIX, PREFIX_LEN) != 0
            || memcmp(b + t1 - SUFFIX_LEN, SUFFIX, SUFFIX_LEN) != 0)
            break;
        const uint8_t *mb = b + t0 + PREFIX_LEN;
        Py_ssize_t mlen = tlen - PREFIX_LEN - SUFFIX_LEN;
        if (memchr(mb, '/', mlen) != NULL)
            break;
        PyObject *meter = text_of(mb, 0, (uint64_t)mlen);
        if (meter == NULL) {
            if (PyErr_Occurred())
                goto error;
            break;
        }
        PyObject *unit = PyDict_GetItemWithError(units, meter);  /* borrowed */
        if (unit == NULL || !PyUnicode_Check(unit)) {
            Py_DECREF(meter);
            if (PyErr_Occurred())
                goto error;
            break;
        }
        Py_INCREF(unit);
        PyObject *body = reading_of(b + p, stop - p, meter, mb, mlen, unit);
        Py_DECREF(unit);
        Py_DECREF(meter);
        if (body == NULL) {
            if (PyErr_Occurred())
                goto error;
            break;
        }
        int err = PyList_Append(bodies, body);
        Py_DECREF(body);
        if (err < 0)
            goto error;
        if (qos) {
            PyObject *pid = PyLong_FromSsize_t(packet_id);
            if (pid == NULL)
                goto error;
            err = PyList_Append(ids, pid);
            Py_DECREF(pid);
            if (err < 0)
                goto error;
        }
        pos = stop;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(pos);
error:
    PyBuffer_Release(&view);
    return NULL;
}

/* --- claim_arrays: a batch of reading uplinks as PostgreSQL binary arrays -------------------
 *
 * The 12 column arrays store._claim_params builds as text literals, in the binary
 * wire format instead (array_recv parses it without a number-from-text per
 * element); None when the batch is not all readings with one record each, or holds
 * a value the text path writes differently: the caller then builds the text.
 */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Text;

static int
text_put(Text *t, const char *s, Py_ssize_t n)
{
    if (t->len + n > t->cap) {
        Py_ssize_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n)
            cap *= 2;
        char *d = PyMem_Realloc(t->data, cap);
        if (d == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        t->data = d;
        t->cap = cap;
    }
    memcpy(t->data + t->len, s, n);
    t->len += n;
    return 0;
}

static int
put_be32(Text *t, uint32_t v)
{
    char b[4] = {(char)(v >> 24), (char)(v >> 16), (char)(v >> 8), (char)v};
    return text_put(t, b, 4);
}

/* One element of a binary int8/int4 array: an exact int or None (NULL);
 * 1 = not taken (bool, int subclass, out of range: the Python path builds what it
 * builds and PostgreSQL judges it), -1 = error. */
static int
put_int(Text *t, PyObject *v, int width, int *nulls)
{
    if (v == Py_None) {
        *nulls = 1;
        return put_be32(t, 0xFFFFFFFFu);
    }
    if (!PyLong_CheckExact(v))
        return 1;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow)
        return 1;
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (width == 4 && (x < INT32_MIN || x > INT32_MAX))
        return 1;
    uint64_t u = (uint64_t)x;
    if (put_be32(t, (uint32_t)width) < 0)
        return -1;
    if (width == 8 && put_be32(t, (uint32_t)(u >> 32)) < 0)
        return -1;
    return put_be32(t, (uint32_t)u);
}

/* One element of a binary text array: an exact str. */
static int
put_text(Text *t, PyObject *v)
{
    Py_ssize_t n;
    if (!PyUnicode_CheckExact(v))
        return 1;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL)
        return -1;
    if (n > INT32_MAX)
        return 1;
    if (put_be32(t, (uint32_t)n) < 0)
        return -1;
    return text_put(t, s, n);
}

enum { A_M, A_S, A_K, A_T, A_IV, A_CUM, A_RST, A_RE, A_RMV, A_RMA, A_RF, A_RSP, A_COUNT };
/* element type OIDs (pg_type): text 25, int8 20, int4 23 */
static const uint32_t ELEMENT_OID[A_COUNT] = {25, 20, 25, 20, 23, 20, 20, 20, 20, 20, 23, 23};

/* "reading" as a text element: length then bytes */
static const char READING_ELEMENT[] = "\0\0\0\7reading";

static PyObject *
claim_arrays(PyObject *module, PyObject *bodies)
{
    if (!PyList_Check(bodies)) {
        PyErr_SetString(PyExc_TypeError, "claim_arrays(bodies): bodies must be a list");
        return NULL;
    }
    Text cols[A_COUNT];
    int nulls[A_COUNT];
    memset(cols, 0, sizeof cols);
    memset(nulls, 0, sizeof nulls);
    PyObject *result = NULL;
    Py_ssize_t count = PyList_GET_SIZE(bodies);
    int r = 0;
    for (Py_ssize_t i = 0; i < count && r == 0; i++) {
        PyObject *b = PyList_GET_ITEM(bodies, i), *v[K_COUNT], *kind;
        if (!PyDict_CheckExact(b)) {
            r = 1;
            break;
        }
        kind = PyDict_GetItemWithError(b, KIND_KEY);
        if (kind == NULL || !PyUnicode_Check(kind) || PyUnicode_Compare(kind, READING) != 0) {
            r = PyErr_Occurred() ? -1 : 1;
            break;
        }
        for (int k = 0; k < K_COUNT; k++) {
            v[k] = PyDict_GetItemWithError(b, KEYS[k]);
            if (v[k] == NULL) {
                r = PyErr_Occurred() ? -1 : 1;
                break;
            }
        }
        if (r)
            break;
        PyObject *rows = v[K_R], *row;
        if (!PyList_CheckExact(rows) || PyList_GET_SIZE(rows) != 1
            || !PyList_CheckExact(row = PyList_GET_ITEM(rows, 0))
            || PyList_GET_SIZE(row) != RECORD_LEN) {
            r = 1;  /* not one record per uplink: the Python path pairs them */
            break;
        }
        PyObject **x = &PyList_GET_ITEM(row, 0);  /* start, energy, mv, ma, flags, span */
        if ((r = put_text(&cols[A_M], v[K_M]))
            || (r = put_int(&cols[A_S], v[K_S], 8, &nulls[A_S]))
            || (r = text_put(&cols[A_K], READING_ELEMENT, 11))
            || (r = put_int(&cols[A_T], v[K_T], 8, &nulls[A_T]))
            || (r = put_int(&cols[A_IV], v[K_IV], 4, &nulls[A_IV]))
            || (r = put_int(&cols[A_CUM], v[K_CUM], 8, &nulls[A_CUM]))
            || (r = put_int(&cols[A_RST], x[0], 8, &nulls[A_RST]))
            || (r = put_int(&cols[A_RE], x[1], 8, &nulls[A_RE]))
            || (r = put_int(&cols[A_RMV], x[2], 8, &nulls[A_RMV]))
            || (r = put_int(&cols[A_RMA], x[3], 8, &nulls[A_RMA]))
            /* flags: ``flags or 0``; span: the uplink's iv when null */
            || (r = put_int(&cols[A_RF], x[4] == Py_None ? ZERO : x[4], 4, &nulls[A_RF]))
            || (r = put_int(&cols[A_RSP], x[5] == Py_None ? v[K_IV] : x[5], 4, &nulls[A_RSP])))
            break;
    }
    if (r < 0)
        goto done;
    if (r > 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyTuple_New(A_COUNT);
    if (result == NULL)
        goto done;
    for (int c = 0; c < A_COUNT; c++) {
        /* array_recv's layout: ndim, has-nulls flag, element OID, then per dimension
           its length and lower bound; an empty array has no dimension */
        Text head = {NULL, 0, 0};
        PyObject *data = NULL;
        if (put_be32(&head, count ? 1 : 0) == 0 && put_be32(&head, (uint32_t)nulls[c]) == 0
            && put_be32(&head, ELEMENT_OID[c]) == 0
            && (!count || (put_be32(&head, (uint32_t)count) == 0 && put_be32(&head, 1) == 0))) {
            data = PyBytes_FromStringAndSize(NULL, head.len + cols[c].len);
            if (data != NULL) {
                memcpy(PyBytes_AS_STRING(data), head.data, head.len);
                if (cols[c].len)
                    memcpy(PyBytes_AS_STRING(data) + head.len, cols[c].data, cols[c].len);
            }
        }
        PyMem_Free(head.data);
        if (data == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyTuple_SET_ITEM(result, c, data);
    }
done:
    for (int c = 0; c < A_COUNT; c++)
        PyMem_Free(cols[c].data);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(buf, pos, max_packet, units, bodies, ids) -> position of the first frame not taken"},
    {"claim_arrays", (PyCFunction)claim_arrays, METH_O,
     "claim_arrays(bodies) -> the 12 arrays of store._pg_claim_readings in PostgreSQL's binary "
     "format, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fastingest",
    "Reading uplinks from MQTT frames in C; see headend/fastscan.py.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastingest(void)
{
    for (int i = 0; i < K_COUNT; i++) {
        if (KEYS[i] == NULL && (KEYS[i] = PyUnicode_InternFromString(KEY_NAMES[i])) == NULL)
            return NULL;
    }
    if (KIND_KEY == NULL && (KIND_KEY = PyUnicode_InternFromString("kind")) == NULL)
        return NULL;
    if (READING == NULL && (READING = PyUnicode_InternFromString("reading")) == NULL)
        return NULL;
    if (ZERO == NULL && (ZERO = PyLong_FromLong(0)) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_PAYLOAD", MAX_PAYLOAD) < 0
        || PyModule_AddIntConstant(m, "FORMAT", FORMAT) < 0
        || PyModule_AddIntConstant(m, "RECORD_LEN", RECORD_LEN) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
