/*
 * rapidwsgi._cfast: the common HTTP/1.1 request path in C.
 *
 * Contract (the Python modules stay the reference; tests/test_cpath.py holds this file
 * to them byte for byte and environ for environ):
 *
 *   - parse_one() accepts a request head only when it is complete in the buffer and
 *     inside a deliberately narrow, strict subset of HTTP/1.1 (RFC 9112 §2-§5): a
 *     registered method, an origin-form target of plain ASCII, HTTP/1.0 or 1.1, token
 *     field names, visible-ASCII field values, no body (Content-Length 0 at most), no
 *     Transfer-Encoding, Expect or Upgrade, at most one valid Host (required in 1.1),
 *     within the configured limits. Everything else, valid or not, is *declined*: the
 *     bytes go to the Python parser (llhttp plus protocols/http1/_semantics.py), which
 *     gives the verdict. So the C parser never answers an error itself, and for the
 *     heads it accepts it yields exactly the Request the reference would.
 *   - Fast.serve() runs accepted requests to completion when the application returns
 *     a list or tuple of bytes after one valid start_response(): the environ is built
 *     from the connection's base dict, the application runs in its own contextvars
 *     context with the loop hidden (as connection._run_step does), and the response
 *     head and body leave in one transport.write. Anything else (an exception, a
 *     streaming iterable, write(), a Content-Length mismatch, threaded dispatch) is
 *     handed to the connection's Python machinery with the same Request, environ,
 *     context and Response objects the Python path would have built (the _c_* hooks
 *     of connection.HTTPConnection), so a client cannot tell the two paths apart.
 *   - A request under a --static mount (PATH_INFO compared with StaticFiles.prefixes
 *     and .bares, as StaticFiles.claims does) is parsed and built here and answered by
 *     connection._dispatch (static.py): the application never sees it.
 *
 * Reference counting: every function owns the references it creates and releases them
 * on every exit path; "borrowed" marks the few that are not owned. GC-tracked types
 * (Fast, StartResponse) traverse every object they own, since an application can
 * close a cycle through them (a generator that holds start_response).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ module state */

/* Filled once by setup() from the Python side (no import cycles from C). */
static PyObject *Request_type;      /* events.Request */
static PyObject *Response_type;     /* events.Response */
static PyObject *parse_status;      /* wsgi._parse_status(status) -> (code, line) */
static PyObject *header_parts;      /* wsgi.header_parts(headers) -> (block, cl, close, add) */
static PyObject *status_cache;      /* wsgi._status_cache (shared with Python) */
static PyObject *headers_cache;     /* wsgi._headers_cache (shared with Python) */
static PyObject *AppError;          /* errors.AppError */
static PyObject *set_running_loop;  /* asyncio.events._set_running_loop */

static PyObject *s_REQUEST_METHOD, *s_PATH_INFO, *s_QUERY_STRING, *s_RAW_URI, *s_REQUEST_URI,
    *s_SERVER_PROTOCOL, *s_wsgi_input, *s_CONTENT_LENGTH, *s_SCRIPT_NAME, *s_HTTP_COOKIE,
    *s_HTTP_11, *s_HTTP_10, *s_zero, *s_empty, *s_sep_comma, *s_sep_cookie;
static PyObject *s_c_exchange, *s_c_adopt, *s_c_closed, *s_c_dispatch, *s_c_forwarded, *s_write,
    *s_start_response, *s_authority, *s_content_length, *s_chunked, *s_keep_alive,
    *s_expect_continue, *s_forwarded, *kw_request;
static PyObject *s_shutting_down;
static PyObject *b_11, *b_10, *b_empty;

enum { M_GET, M_HEAD, M_POST, M_PUT, M_DELETE, M_OPTIONS, M_PATCH, M_TRACE, M_COUNT };
static const char *const method_names[M_COUNT] = {"GET",     "HEAD",  "POST",  "PUT",
                                                  "DELETE",  "OPTIONS", "PATCH", "TRACE"};
static PyObject *method_str[M_COUNT];
static PyObject *method_bytes[M_COUNT];

/* ------------------------------------------------------------------ Meter
 *
 * A worker's writer of its slot in the master's shared region (metrics.py states the
 * rules and owns the layout, which it hands over at construction: one layout, no copy
 * of it here). metrics.PyMeter is the reference; tests/test_metrics.py holds the two
 * to identical bytes. Every update runs under the GIL, so increments from application
 * threads (count()) are never lost; the C path updates the slot directly (meter_*). */

#define METER_MAX_BUCKETS 32
#define METER_METHOD_BYTES 16 /* metrics.METHOD_BYTES, checked by Meter() */

/* The C path's methods, NUL-padded as a record holds them. */
static const char meter_method_name[M_COUNT][METER_METHOD_BYTES] = {"GET",    "HEAD",    "POST",  "PUT",
                                                                  "DELETE", "OPTIONS", "PATCH", "TRACE"};

typedef struct {
    PyObject_HEAD
    Py_buffer view;   /* the shared region, held while the meter lives */
    uint64_t *w;      /* the slot's words */
    unsigned char *b; /* the slot's bytes (records) */
    Py_ssize_t o_req, o_bucket, o_sum, o_in, o_out, rec_at, rec_bytes, nrec, nm, ns, nb, nwords, method_bytes,
        path_at;
    uint64_t bounds[METER_MAX_BUCKETS];
} Meter;

/* The METHODS index (metrics.py) of each M_* method. */
static const int meter_method[M_COUNT] = {0, 1, 2, 3, 4, 6, 5, 7};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic_ns()'s clock */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void meter_request(Meter *m, Py_ssize_t proto, Py_ssize_t method, long status, uint64_t dur, uint64_t in,
                          uint64_t out) {
    Py_ssize_t sc = status >= 100 && status < 600 ? status / 100 - 1 : m->ns - 1;
    m->w[m->o_req + (proto * m->nm + method) * m->ns + sc]++;
    Py_ssize_t k = 0;
    while (k < m->nb - 1 && dur > m->bounds[k]) k++;
    m->w[m->o_bucket + proto * m->nb + k]++;
    m->w[m->o_sum + proto] += dur;
    m->w[m->o_in + proto] += in;
    m->w[m->o_out + proto] += out;
}

/* Rule 5 of metrics.py: the sequence number is odd while the record changes; the
 * compiler barriers keep the stores in that order (x86 and ARM64 readers see them in
 * program order for aligned words, or retry on a mismatch). */
static void meter_begin(Meter *m, Py_ssize_t rec, const char method[METER_METHOD_BYTES], const char *path,
                        Py_ssize_t plen, uint64_t start) {
    if (rec < 0 || rec >= m->nrec) return;
    unsigned char *r = m->b + m->rec_at + rec * m->rec_bytes;
    uint64_t seq;
    memcpy(&seq, r, 8);
    seq++;
    __atomic_store_n((uint64_t *)r, seq, __ATOMIC_RELEASE);
    memcpy(r + 8, &start, 8);
    memcpy(r + 16, method, METER_METHOD_BYTES);
    Py_ssize_t room = m->rec_bytes - m->path_at;
    if (plen > room) plen = room;
    uint16_t pl = (uint16_t)plen;
    memcpy(r + 32, &pl, 2);
    memcpy(r + m->path_at, path, (size_t)plen);
    __atomic_store_n((uint64_t *)r, seq + 1, __ATOMIC_RELEASE);
}

static void meter_end(Meter *m, Py_ssize_t rec) {
    if (rec < 0 || rec >= m->nrec) return;
    unsigned char *r = m->b + m->rec_at + rec * m->rec_bytes;
    uint64_t seq, zero = 0;
    memcpy(&seq, r, 8);
    __atomic_store_n((uint64_t *)r, seq + 1, __ATOMIC_RELEASE);
    memcpy(r + 8, &zero, 8);
    __atomic_store_n((uint64_t *)r, seq + 2, __ATOMIC_RELEASE);
}

static PyTypeObject Meter_Type;

/* Meter(region, slot, layout): layout = (slot_bytes, requests, duration_buckets,
 * duration_sum, request_bytes, response_bytes, words, records_at, record_bytes, records,
 * methods, status_classes, method_bytes, path_at, bucket bounds in ns (tuple)). */
static PyObject *meter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *region, *layout;
    Py_ssize_t slot;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "Meter(region, slot, layout)");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OnO!:Meter", &region, &slot, &PyTuple_Type, &layout)) return NULL;
    if (PyTuple_GET_SIZE(layout) != 15 || !PyTuple_Check(PyTuple_GET_ITEM(layout, 14))) {
        PyErr_SetString(PyExc_ValueError, "Meter(): bad layout");
        return NULL;
    }
    Py_ssize_t v[14];
    for (int i = 0; i < 14; i++) {
        v[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(layout, i));
        if (v[i] < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "Meter(): bad layout");
            return NULL;
        }
    }
    PyObject *bounds = PyTuple_GET_ITEM(layout, 14);
    Py_ssize_t nbounds = PyTuple_GET_SIZE(bounds);
    if (nbounds + 1 > METER_MAX_BUCKETS || v[6] * 8 > v[7] || v[13] >= v[8] || v[12] != METER_METHOD_BYTES ||
        v[12] + 16 > v[13] ||
        v[7] + v[9] * v[8] > v[0]) {
        PyErr_SetString(PyExc_ValueError, "Meter(): bad layout");
        return NULL;
    }
    Meter *self = (Meter *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    if (PyObject_GetBuffer(region, &self->view, PyBUF_WRITABLE) < 0) {
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    if (slot < 0 || (slot + 1) * v[0] > self->view.len) {
        PyErr_SetString(PyExc_ValueError, "Meter(): slot out of the region");
        Py_DECREF(self);
        return NULL;
    }
    self->b = (unsigned char *)self->view.buf + slot * v[0];
    if (((uintptr_t)self->b) % 8) {
        PyErr_SetString(PyExc_ValueError, "Meter(): unaligned slot");
        Py_DECREF(self);
        return NULL;
    }
    self->w = (uint64_t *)self->b;
    self->o_req = v[1];
    self->o_bucket = v[2];
    self->o_sum = v[3];
    self->o_in = v[4];
    self->o_out = v[5];
    self->nwords = v[6];
    self->rec_at = v[7];
    self->rec_bytes = v[8];
    self->nrec = v[9];
    self->nm = v[10];
    self->ns = v[11];
    self->method_bytes = v[12];
    self->path_at = v[13];
    self->nb = nbounds + 1;
    for (Py_ssize_t i = 0; i < nbounds; i++) {
        unsigned long long b = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(bounds, i));
        if (b == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(self);
            return NULL;
        }
        self->bounds[i] = b;
    }
    return (PyObject *)self;
}

static void meter_dealloc(PyObject *op) {
    Meter *self = (Meter *)op;
    if (self->view.obj != NULL) PyBuffer_Release(&self->view);
    Py_TYPE(op)->tp_free(op);
}

static int args_u64(PyObject *const *args, Py_ssize_t n, uint64_t *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long v = PyLong_AsUnsignedLongLong(args[i]);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        out[i] = v;
    }
    return 0;
}

/* request(protocol, method, status, duration_ns, bytes_in, bytes_out) */
static PyObject *meter_request_method(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
    Meter *m = (Meter *)op;
    uint64_t v[6];
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "request(protocol, method, status, duration_ns, bytes_in, bytes_out)");
        return NULL;
    }
    long long dur = PyLong_AsLongLong(args[3]);
    if (dur == -1 && PyErr_Occurred()) return NULL;
    if (args_u64(args, 3, v) < 0 || args_u64(args + 4, 2, v + 4) < 0) return NULL;
    v[3] = dur < 0 ? 0 : (uint64_t)dur; /* one monotonic clock: never below 0, but never trusted */
    if (v[0] >= 3 || (Py_ssize_t)v[1] >= m->nm) {
        PyErr_SetString(PyExc_ValueError, "request(): protocol or method out of range");
        return NULL;
    }
    meter_request(m, (Py_ssize_t)v[0], (Py_ssize_t)v[1], v[2] >= 600 ? 0 : (long)v[2], v[3], v[4], v[5]);
    Py_RETURN_NONE;
}

/* finish(record, protocol, method, status, started_ns, bytes_in, bytes_out): end(record)
 * when record >= 0, then request(...) with the duration from started_ns to now. */
static PyObject *meter_finish_method(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
    Meter *m = (Meter *)op;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "finish(record, protocol, method, status, started_ns, bytes_in, bytes_out)");
        return NULL;
    }
    Py_ssize_t rec = PyLong_AsSsize_t(args[0]);
    if (rec == -1 && PyErr_Occurred()) return NULL;
    uint64_t v[6];
    if (args_u64(args + 1, 6, v) < 0) return NULL;
    if (v[0] >= 3 || (Py_ssize_t)v[1] >= m->nm) {
        PyErr_SetString(PyExc_ValueError, "finish(): protocol or method out of range");
        return NULL;
    }
    if (rec >= 0) meter_end(m, rec);
    uint64_t now = now_ns();
    meter_request(m, (Py_ssize_t)v[0], (Py_ssize_t)v[1], v[2] >= 600 ? 0 : (long)v[2], now > v[3] ? now - v[3] : 0,
                  v[4], v[5]);
    Py_RETURN_NONE;
}

static PyObject *meter_count_method(PyObject *op, PyObject *arg) {
    Meter *m = (Meter *)op;
    Py_ssize_t word = PyLong_AsSsize_t(arg);
    if (word == -1 && PyErr_Occurred()) return NULL;
    if (word < 0 || word >= m->nwords) {
        PyErr_SetString(PyExc_ValueError, "count(): no such word");
        return NULL;
    }
    m->w[word]++;
    Py_RETURN_NONE;
}

/* gauges(active, idle, busy, waiting): the four words after the counters. */
static PyObject *meter_gauges_method(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
    Meter *m = (Meter *)op;
    uint64_t v[4];
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "gauges(active, idle, busy, waiting)");
        return NULL;
    }
    if (args_u64(args, 4, v) < 0) return NULL;
    memcpy(m->w + m->nwords - 4, v, sizeof v);
    Py_RETURN_NONE;
}

/* begin(record, method: bytes, path: bytes, start_ns) */
static PyObject *meter_begin_method(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
    Meter *m = (Meter *)op;
    if (nargs != 4 || !PyBytes_Check(args[1]) || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "begin(record, method: bytes, path: bytes, start_ns)");
        return NULL;
    }
    Py_ssize_t rec = PyLong_AsSsize_t(args[0]);
    if (rec == -1 && PyErr_Occurred()) return NULL;
    uint64_t start;
    if (args_u64(args + 3, 1, &start) < 0) return NULL;
    char method[METER_METHOD_BYTES] = {0};
    Py_ssize_t mlen = PyBytes_GET_SIZE(args[1]);
    memcpy(method, PyBytes_AS_STRING(args[1]), (size_t)(mlen < METER_METHOD_BYTES ? mlen : METER_METHOD_BYTES));
    meter_begin(m, rec, method, PyBytes_AS_STRING(args[2]), PyBytes_GET_SIZE(args[2]), start);
    Py_RETURN_NONE;
}

static PyObject *meter_end_method(PyObject *op, PyObject *arg) {
    Py_ssize_t rec = PyLong_AsSsize_t(arg);
    if (rec == -1 && PyErr_Occurred()) return NULL;
    meter_end((Meter *)op, rec);
    Py_RETURN_NONE;
}

static PyMethodDef meter_methods[] = {
    {"request", (PyCFunction)(void (*)(void))meter_request_method, METH_FASTCALL,
     "request(protocol, method, status, duration_ns, bytes_in, bytes_out)"},
    {"finish", (PyCFunction)(void (*)(void))meter_finish_method, METH_FASTCALL,
     "finish(record, protocol, method, status, started_ns, bytes_in, bytes_out)"},
    {"count", meter_count_method, METH_O, "count(word): one more"},
    {"gauges", (PyCFunction)(void (*)(void))meter_gauges_method, METH_FASTCALL, "gauges(active, idle, busy, waiting)"},
    {"begin", (PyCFunction)(void (*)(void))meter_begin_method, METH_FASTCALL, "begin(record, method, path, start_ns)"},
    {"end", meter_end_method, METH_O, "end(record)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Meter_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rapidwsgi._cfast.Meter",
    .tp_basicsize = sizeof(Meter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = meter_new,
    .tp_dealloc = meter_dealloc,
    .tp_methods = meter_methods,
};

/* The raised exception (new reference, traceback attached) and clear it; NULL if none. */
static PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* Raise ``exc`` again (steals the reference); NULL: a SystemError. */
static void restore_exception(PyObject *exc) {
    if (exc == NULL) {
        PyErr_SetString(PyExc_SystemError, "rapidwsgi._cfast: lost exception");
        return;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

/* ------------------------------------------------------------------ character classes */

/* RFC 9110 §5.6.2 tchar */
static unsigned char is_tchar[256];
/* Request-target bytes the C parser accepts: RFC 3986 pchar, "/" and "?" (no "#": the
 * reference refuses a fragment; no bytes >= 0x80 or the delimiters llhttp treats
 * leniently: those go to the reference). */
static unsigned char is_target[256];
/* Field value bytes accepted here: VCHAR, SP, HTAB (obs-text goes to the reference). */
static unsigned char is_vchar[256];
/* Host = reg-name [":" port] (protocols/_grammar.HOST_VALUE without IP-literals). */
static unsigned char is_regname[256];

static void init_tables(void) {
    const char *t = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++) is_tchar[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) is_tchar[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) is_tchar[c] = 1;
    for (; *t; t++) is_tchar[(unsigned char)*t] = 1;
    const char *p = "-._~!$&'()*+,;=:@/?%";
    for (int c = '0'; c <= '9'; c++) is_target[c] = is_regname[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) is_target[c] = is_regname[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) is_target[c] = is_regname[c] = 1;
    for (; *p; p++) is_target[(unsigned char)*p] = 1;
    const char *r = "-._~%!$&'()*+,;=";
    for (; *r; r++) is_regname[(unsigned char)*r] = 1;
    for (int c = 0x20; c < 0x7f; c++) is_vchar[c] = 1;
    is_vchar['\t'] = 1;
}

/* ------------------------------------------------------------------ field names */

enum {
    F_PLAIN,    /* HTTP_* key */
    F_DROPPED,  /* contains "_": no environ key (the waitress rule, wsgi._environ_key) */
    F_CLENGTH,  /* CONTENT_LENGTH from the parsed framing */
    F_HOST,
    F_CONNECTION,
    F_FORWARD,  /* one of events.FORWARDING_FIELDS */
    F_DECLINE,  /* transfer-encoding, expect, upgrade: the reference handles them */
};

#define NAME_MAX_CACHED 64
#define NAME_SLOTS 512
#define VALUE_MAX_CACHED 80

typedef struct {
    Py_ssize_t len;   /* 0: empty slot */
    char lower[NAME_MAX_CACHED];
    int kind;
    unsigned gen;     /* request generation that last saw this field (repeats) */
    PyObject *key;    /* environ key (str), NULL for F_DROPPED */
    PyObject *lname;  /* lower-cased name (bytes), for Request.headers */
    Py_ssize_t value_len; /* the last value seen (most fields repeat from request to request) */
    char value[VALUE_MAX_CACHED];
    PyObject *value_str;
} NameEntry;

static NameEntry names[NAME_SLOTS];
static Py_ssize_t names_used;
static unsigned request_gen = 1;

static int classify(const char *lower, Py_ssize_t n) {
#define IS(lit) (n == (Py_ssize_t)sizeof(lit) - 1 && memcmp(lower, lit, n) == 0)
    if (IS("host")) return F_HOST;
    if (IS("content-length")) return F_CLENGTH;
    if (IS("connection")) return F_CONNECTION;
    if (IS("transfer-encoding") || IS("expect") || IS("upgrade")) return F_DECLINE;
    if (IS("forwarded") || IS("x-forwarded-for") || IS("x-forwarded-proto") || IS("x-forwarded-host") ||
        IS("x-forwarded-port") || IS("x-forwarded-by") || IS("x-real-ip"))
        return F_FORWARD;
    if (memchr(lower, '_', n) != NULL) return F_DROPPED;
    return F_PLAIN;
#undef IS
}

/* The environ key for a lower-cased field name (wsgi._environ_key), new reference. */
static PyObject *make_key(const char *lower, Py_ssize_t n, int kind) {
    if (kind == F_DROPPED) return NULL;
    if (n == 12 && memcmp(lower, "content-type", 12) == 0) return PyUnicode_InternFromString("CONTENT_TYPE");
    char buf[5 + 256];
    char *out = n <= 256 ? buf : PyMem_Malloc(5 + n);
    if (out == NULL) return PyErr_NoMemory();
    memcpy(out, "HTTP_", 5);
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = lower[i];
        out[5 + i] = c == '-' ? '_' : (c >= 'a' && c <= 'z') ? (char)(c - 32) : c;
    }
    PyObject *key = PyUnicode_FromStringAndSize(out, 5 + n);
    if (out != buf) PyMem_Free(out);
    if (key != NULL) PyUnicode_InternInPlace(&key);
    return key;
}

/* Look up (or add) the cache entry of a field name; NULL (no error) if not cacheable. */
static NameEntry *name_entry(const char *raw, Py_ssize_t n, size_t hash) {
    if (n > NAME_MAX_CACHED) return NULL;
    size_t slot = hash & (NAME_SLOTS - 1);
    for (int probe = 0; probe < 8; probe++, slot = (slot + 1) & (NAME_SLOTS - 1)) {
        NameEntry *e = &names[slot];
        if (e->len == 0) {
            if (names_used >= NAME_SLOTS / 2) return NULL;
            char lower[NAME_MAX_CACHED];
            for (Py_ssize_t i = 0; i < n; i++) lower[i] = (char)Py_TOLOWER((unsigned char)raw[i]);
            int kind = classify(lower, n);
            PyObject *key = make_key(lower, n, kind);
            if (key == NULL && kind != F_DROPPED) {
                PyErr_Clear();
                return NULL;
            }
            PyObject *lname = PyBytes_FromStringAndSize(lower, n);
            if (lname == NULL) {
                PyErr_Clear();
                Py_XDECREF(key);
                return NULL;
            }
            memcpy(e->lower, lower, n);
            e->kind = kind;
            e->key = key;
            e->lname = lname;
            e->gen = 0;
            e->value_str = NULL;
            e->len = n;
            names_used++;
            return e;
        }
        if (e->len == n) {
            Py_ssize_t i = 0;
            while (i < n && e->lower[i] == (char)Py_TOLOWER((unsigned char)raw[i])) i++;
            if (i == n) return e;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ the head parser */

#define MAX_FIELDS 128

typedef struct {
    const char *name;
    Py_ssize_t name_len;
    const char *value;
    Py_ssize_t value_len;
    NameEntry *entry; /* NULL: not cached (long name); kind below then */
    int kind;
} Field;

typedef struct {
    int method;
    const char *target;
    Py_ssize_t target_len;
    Py_ssize_t path_len; /* up to "?" */
    int v11;
    int keep_alive;
    int forwarded;
    int has_cl;
    Py_ssize_t nfields;
    Field fields[MAX_FIELDS];
} Head;

typedef struct {
    Py_ssize_t max_line, max_fields, max_field_size;
} Limits;

static size_t name_hash(const char *s, Py_ssize_t n) {
    size_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (unsigned char)Py_TOLOWER((unsigned char)s[i])) * 16777619u;
    return h;
}

static int token_is(const char *s, Py_ssize_t n, const char *lit) {
    Py_ssize_t m = (Py_ssize_t)strlen(lit);
    if (n != m) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (Py_TOLOWER((unsigned char)s[i]) != lit[i]) return 0;
    return 1;
}

/* Connection tokens (RFC 9110 §7.6.1), as _semantics._split_list reads them:
 * bit 1 close, bit 2 keep-alive; -1 declines ("upgrade" is the reference's). */
static int connection_tokens(const char *v, Py_ssize_t n) {
    int bits = 0;
    Py_ssize_t i = 0;
    while (i <= n) {
        Py_ssize_t j = i;
        while (j < n && v[j] != ',') j++;
        Py_ssize_t a = i, b = j;
        while (a < b && (v[a] == ' ' || v[a] == '\t')) a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t')) b--;
        if (token_is(v + a, b - a, "close")) bits |= 1;
        else if (token_is(v + a, b - a, "keep-alive")) bits |= 2;
        else if (token_is(v + a, b - a, "upgrade")) return -1;
        i = j + 1;
    }
    return bits;
}

/* Parse one head at buf[0:len]. Returns its length (> 0), or 0 to decline. */
static Py_ssize_t parse_one(const char *buf, Py_ssize_t len, const Limits *lim, Head *h) {
    const char *p = buf, *end = buf + len;
    int m = -1;
    /* Request line, RFC 9112 §3: method SP request-target SP HTTP-version CRLF. */
    switch (len > 0 ? p[0] : 0) {
    case 'G': if (len > 4 && memcmp(p, "GET ", 4) == 0) m = M_GET; break;
    case 'H': if (len > 5 && memcmp(p, "HEAD ", 5) == 0) m = M_HEAD; break;
    case 'P':
        if (len > 5 && memcmp(p, "POST ", 5) == 0) m = M_POST;
        else if (len > 4 && memcmp(p, "PUT ", 4) == 0) m = M_PUT;
        else if (len > 6 && memcmp(p, "PATCH ", 6) == 0) m = M_PATCH;
        break;
    case 'D': if (len > 7 && memcmp(p, "DELETE ", 7) == 0) m = M_DELETE; break;
    case 'O': if (len > 8 && memcmp(p, "OPTIONS ", 8) == 0) m = M_OPTIONS; break;
    case 'T': if (len > 6 && memcmp(p, "TRACE ", 6) == 0) m = M_TRACE; break;
    default: break;
    }
    if (m < 0) return 0;
    p += strlen(method_names[m]) + 1;
    if (p >= end || *p != '/') return 0; /* origin-form only (§3.2.1) */
    const char *target = p;
    const char *query = NULL;
    while (p < end && is_target[(unsigned char)*p]) {
        if (*p == '?' && query == NULL) query = p;
        p++;
    }
    if (p >= end || *p != ' ') return 0;
    h->method = m;
    h->target = target;
    h->target_len = p - target;
    h->path_len = (query ? query : p) - target;
    if (h->target_len > lim->max_line) return 0; /* the reference answers 414 */
    p++;
    if (end - p < 10 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != '\r' || p[9] != '\n') return 0;
    if (p[7] == '1') h->v11 = 1;
    else if (p[7] == '0') h->v11 = 0;
    else return 0;
    p += 10;

    /* Field lines, RFC 9112 §5: field-name ":" OWS field-value OWS CRLF. */
    int hosts = 0, conn_bits = 0;
    h->forwarded = 0;
    h->has_cl = 0;
    h->nfields = 0;
    Py_ssize_t max_fields = lim->max_fields < MAX_FIELDS ? lim->max_fields : MAX_FIELDS;
    for (;;) {
        if (end - p < 2) return 0;
        if (p[0] == '\r') {
            if (p[1] != '\n') return 0;
            p += 2;
            break;
        }
        const char *name = p;
        size_t hash = 2166136261u;
        while (p < end && is_tchar[(unsigned char)*p]) {
            hash = (hash ^ (unsigned char)Py_TOLOWER((unsigned char)*p)) * 16777619u;
            p++;
        }
        Py_ssize_t name_len = p - name;
        if (name_len == 0 || p >= end || *p != ':') return 0;
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *value = p;
        while (p < end && is_vchar[(unsigned char)*p]) p++;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return 0;
        Py_ssize_t raw_len = p - value; /* with trailing OWS: what the limit counts */
        p += 2;
        if (name_len + raw_len + 2 > lim->max_field_size) return 0;
        while (raw_len > 0 && (value[raw_len - 1] == ' ' || value[raw_len - 1] == '\t')) raw_len--;
        if (h->nfields >= max_fields) return 0;
        Field *f = &h->fields[h->nfields++];
        f->name = name;
        f->name_len = name_len;
        f->value = value;
        f->value_len = raw_len;
        NameEntry *e = name_entry(name, name_len, hash);
        f->entry = e;
        int kind;
        if (e != NULL) {
            kind = e->kind;
        } else {
            char lower[256];
            if (name_len > 256) return 0;
            for (Py_ssize_t i = 0; i < name_len; i++) lower[i] = (char)Py_TOLOWER((unsigned char)name[i]);
            kind = classify(lower, name_len);
        }
        f->kind = kind;
        switch (kind) {
        case F_DECLINE:
            return 0;
        case F_HOST: {
            if (++hosts > 1) return 0;
            Py_ssize_t i = 0;
            while (i < raw_len && is_regname[(unsigned char)value[i]]) i++;
            if (i < raw_len) {
                if (value[i] != ':') return 0;
                for (i++; i < raw_len; i++)
                    if (value[i] < '0' || value[i] > '9') return 0;
            }
            break;
        }
        case F_CLENGTH:
            /* Only an empty body: a length means a body, which the reference reads. */
            if (h->has_cl || raw_len == 0) return 0;
            for (Py_ssize_t i = 0; i < raw_len; i++)
                if (value[i] != '0') return 0;
            h->has_cl = 1;
            break;
        case F_CONNECTION: {
            int bits = connection_tokens(value, raw_len);
            if (bits < 0) return 0;
            conn_bits |= bits;
            break;
        }
        case F_FORWARD:
            h->forwarded = 1;
            break;
        default:
            break;
        }
    }
    if (hosts == 0 && h->v11) return 0; /* the reference answers 400 (RFC 9112 §3.2) */
    /* Persistence, RFC 9112 §9.3 (as _semantics.request_from_head decides it). */
    if (h->v11) h->keep_alive = !(conn_bits & 1);
    else h->keep_alive = (conn_bits & 2) && !(conn_bits & 1);
    return p - buf;
}

/* ------------------------------------------------------------------ environ values */

#define TARGET_SLOTS 64
#define TARGET_MAX 256

typedef struct {
    Py_ssize_t len; /* 0: empty */
    char raw[TARGET_MAX];
    PyObject *path_info, *query, *uri;
} TargetEntry;

static TargetEntry targets[TARGET_SLOTS];

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* PATH_INFO, QUERY_STRING, RAW_URI as wsgi._decode_target makes them (borrowed from
 * the cache, or new references into *own when not cacheable). */
static int decode_target(const Head *h, PyObject **path_info, PyObject **query, PyObject **uri,
                         PyObject **own) {
    const char *t = h->target;
    Py_ssize_t n = h->target_len;
    TargetEntry *e = NULL;
    if (n <= TARGET_MAX) {
        size_t hash = name_hash(t, n) ^ (size_t)n; /* (case-folded hash: a few more misses) */
        e = &targets[hash & (TARGET_SLOTS - 1)];
        if (e->len == n && memcmp(e->raw, t, n) == 0) {
            *path_info = e->path_info;
            *query = e->query;
            *uri = e->uri;
            return 0;
        }
    }
    PyObject *u = PyUnicode_DecodeLatin1(t, n, NULL);
    if (u == NULL) return -1;
    PyObject *q = PyUnicode_DecodeLatin1(t + h->path_len + (h->path_len < n), n - h->path_len - (h->path_len < n),
                                         NULL);
    if (q == NULL) {
        Py_DECREF(u);
        return -1;
    }
    PyObject *pi;
    const char *pct = memchr(t, '%', h->path_len);
    if (pct == NULL) {
        pi = h->path_len == n ? Py_NewRef(u) : PyUnicode_DecodeLatin1(t, h->path_len, NULL);
    } else {
        /* urllib.parse.unquote_to_bytes: %XX decoded, malformed escapes kept. */
        char small[TARGET_MAX];
        char *out = h->path_len <= TARGET_MAX ? small : PyMem_Malloc(h->path_len);
        if (out == NULL) {
            Py_DECREF(u);
            Py_DECREF(q);
            PyErr_NoMemory();
            return -1;
        }
        Py_ssize_t o = 0;
        for (Py_ssize_t i = 0; i < h->path_len; i++) {
            int hi, lo;
            if (t[i] == '%' && i + 2 < h->path_len && (hi = hexval(t[i + 1])) >= 0 && (lo = hexval(t[i + 2])) >= 0) {
                out[o++] = (char)(hi * 16 + lo);
                i += 2;
            } else {
                out[o++] = t[i];
            }
        }
        pi = PyUnicode_DecodeLatin1(out, o, NULL);
        if (out != small) PyMem_Free(out);
    }
    if (pi == NULL) {
        Py_DECREF(u);
        Py_DECREF(q);
        return -1;
    }
    if (e != NULL) {
        Py_XDECREF(e->path_info);
        Py_XDECREF(e->query);
        Py_XDECREF(e->uri);
        memcpy(e->raw, t, n);
        e->len = n;
        e->path_info = pi;
        e->query = q;
        e->uri = u;
        *path_info = pi;
        *query = q;
        *uri = u;
        return 0;
    }
    own[0] = pi;
    own[1] = q;
    own[2] = u;
    *path_info = pi;
    *query = q;
    *uri = u;
    return 0;
}

static int set_header(PyObject *env, PyObject *key, const Field *f, int repeated) {
    NameEntry *e = f->entry;
    PyObject *text;
    if (e != NULL && e->value_str != NULL && e->value_len == f->value_len &&
        memcmp(e->value, f->value, f->value_len) == 0) {
        text = Py_NewRef(e->value_str);
    } else {
        text = PyUnicode_DecodeLatin1(f->value, f->value_len, NULL);
        if (text == NULL) return -1;
        if (e != NULL && f->value_len <= VALUE_MAX_CACHED) {
            Py_XSETREF(e->value_str, Py_NewRef(text));
            memcpy(e->value, f->value, f->value_len);
            e->value_len = f->value_len;
        }
    }
    if (repeated) {
        PyObject *old = PyDict_GetItemWithError(env, key); /* borrowed */
        if (old == NULL && PyErr_Occurred()) {
            Py_DECREF(text);
            return -1;
        }
        if (old != NULL) {
            /* RFC 9110 §5.3: a list; Cookie uses "; " (RFC 6265 §5.4). */
            PyObject *sep = PyUnicode_Compare(key, s_HTTP_COOKIE) == 0 ? s_sep_cookie : s_sep_comma;
            PyObject *a = PyUnicode_Concat(old, sep);
            if (a == NULL) {
                Py_DECREF(text);
                return -1;
            }
            PyObject *joined = PyUnicode_Concat(a, text);
            Py_DECREF(a);
            Py_DECREF(text);
            if (joined == NULL) return -1;
            text = joined;
        }
    }
    int rc = PyDict_SetItem(env, key, text);
    Py_DECREF(text);
    return rc;
}

/* The environ for an accepted head (wsgi.build_environ), new reference. */
static PyObject *build_environ(PyObject *base, const Head *h) {
    PyObject *env = PyDict_Copy(base);
    if (env == NULL) return NULL;
    PyObject *own[3] = {NULL, NULL, NULL};
    PyObject *path_info, *query, *uri;
    if (decode_target(h, &path_info, &query, &uri, own) < 0) goto fail;
    PyObject *script = PyDict_GetItemWithError(env, s_SCRIPT_NAME); /* borrowed */
    PyObject *stripped = NULL;
    if (script != NULL && PyUnicode_Check(script) && PyUnicode_GET_LENGTH(script) > 0) {
        /* --root-path: PATH_INFO below the mount point. */
        Py_ssize_t sl = PyUnicode_GET_LENGTH(script), pl = PyUnicode_GET_LENGTH(path_info);
        int match = PyUnicode_Tailmatch(path_info, script, 0, sl, -1);
        if (match < 0) goto fail;
        if (match && (pl == sl || PyUnicode_READ_CHAR(path_info, sl) == '/')) {
            stripped = PyUnicode_Substring(path_info, sl, pl);
            if (stripped == NULL) goto fail;
            path_info = stripped;
        }
    } else if (script == NULL && PyErr_Occurred()) {
        goto fail;
    }
    /* base is a copy of the connection's environ (wsgi.connection_environ, stage 2): it
     * already holds the common values (GET, no query, HTTP/1.1, EMPTY_INPUT). */
    if (h->method != M_GET && PyDict_SetItem(env, s_REQUEST_METHOD, method_str[h->method]) < 0) goto fail_stripped;
    if (PyUnicode_GET_LENGTH(query) > 0 && PyDict_SetItem(env, s_QUERY_STRING, query) < 0) goto fail_stripped;
    if (!h->v11 && PyDict_SetItem(env, s_SERVER_PROTOCOL, s_HTTP_10) < 0) goto fail_stripped;
    if (PyDict_SetItem(env, s_PATH_INFO, path_info) < 0 || PyDict_SetItem(env, s_RAW_URI, uri) < 0 ||
        PyDict_SetItem(env, s_REQUEST_URI, uri) < 0) {
    fail_stripped:
        Py_XDECREF(stripped);
        goto fail;
    }
    Py_XDECREF(stripped);
    unsigned gen = ++request_gen;
    for (Py_ssize_t i = 0; i < h->nfields; i++) {
        const Field *f = &h->fields[i];
        if (f->kind == F_DROPPED) continue;
        if (f->kind == F_CLENGTH) {
            if (PyDict_SetItem(env, s_CONTENT_LENGTH, s_zero) < 0) goto fail;
            continue;
        }
        NameEntry *e = f->entry;
        if (e != NULL) {
            int repeated = e->gen == gen;
            e->gen = gen;
            if (set_header(env, e->key, f, repeated) < 0) goto fail;
        } else {
            char lower[256];
            for (Py_ssize_t j = 0; j < f->name_len; j++) lower[j] = (char)Py_TOLOWER((unsigned char)f->name[j]);
            PyObject *key = make_key(lower, f->name_len, f->kind);
            if (key == NULL) goto fail;
            int rc = set_header(env, key, f, 1);
            Py_DECREF(key);
            if (rc < 0) goto fail;
        }
    }
    for (int i = 0; i < 3; i++) Py_XDECREF(own[i]);
    return env;
fail:
    for (int i = 0; i < 3; i++) Py_XDECREF(own[i]);
    Py_DECREF(env);
    return NULL;
}

/* The events.Request the reference parser would have produced, new reference. */
static PyObject *make_request(const Head *h) {
    PyObject *headers = PyList_New(h->nfields);
    if (headers == NULL) return NULL;
    for (Py_ssize_t i = 0; i < h->nfields; i++) {
        const Field *f = &h->fields[i];
        PyObject *lname;
        if (f->entry != NULL) {
            lname = Py_NewRef(f->entry->lname);
        } else {
            lname = PyBytes_FromStringAndSize(NULL, f->name_len);
            if (lname == NULL) goto fail;
            char *d = PyBytes_AS_STRING(lname);
            for (Py_ssize_t j = 0; j < f->name_len; j++) d[j] = (char)Py_TOLOWER((unsigned char)f->name[j]);
        }
        PyObject *value = PyBytes_FromStringAndSize(f->value, f->value_len);
        if (value == NULL) {
            Py_DECREF(lname);
            goto fail;
        }
        PyObject *pair = PyTuple_Pack(2, lname, value);
        Py_DECREF(lname);
        Py_DECREF(value);
        if (pair == NULL) goto fail;
        PyList_SET_ITEM(headers, i, pair);
    }
    Py_ssize_t qs = h->path_len < h->target_len ? h->path_len + 1 : h->target_len;
    PyObject *target = PyBytes_FromStringAndSize(h->target, h->target_len);
    PyObject *path = PyBytes_FromStringAndSize(h->target, h->path_len);
    PyObject *query = PyBytes_FromStringAndSize(h->target + qs, h->target_len - qs);
    PyObject *kwargs = PyDict_New();
    PyObject *args = NULL, *req = NULL;
    if (target == NULL || path == NULL || query == NULL || kwargs == NULL) goto out;
    if (PyDict_SetItem(kwargs, s_keep_alive, h->keep_alive ? Py_True : Py_False) < 0 ||
        PyDict_SetItem(kwargs, s_forwarded, h->forwarded ? Py_True : Py_False) < 0)
        goto out;
    args = PyTuple_Pack(6, method_bytes[h->method], target, path, query, h->v11 ? b_11 : b_10, headers);
    if (args == NULL) goto out;
    req = PyObject_Call(Request_type, args, kwargs);
out:
    Py_XDECREF(target);
    Py_XDECREF(path);
    Py_XDECREF(query);
    Py_XDECREF(kwargs);
    Py_XDECREF(args);
    Py_DECREF(headers);
    return req;
fail:
    Py_DECREF(headers);
    return NULL;
}

/* ------------------------------------------------------------------ start_response */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *st;       /* (code, status_line) from the status cache, or NULL */
    PyObject *hp;       /* (block, content_length|None, close, add) from the headers cache */
    PyObject *exchange; /* the Python Exchange once the request was handed over, or NULL */
    PyObject *fast;     /* the Fast object (for write(): promotion) */
    const Head *head;   /* valid while the application runs inside Fast.serve */
    PyObject *environ, *context, *date_server; /* borrowed, same lifetime as head */
    uint64_t started; /* the meter's clock at the head (0 without a meter) */
} StartResponse;

static PyTypeObject StartResponse_Type;
static PyTypeObject Writer_Type;

typedef struct {
    PyObject_HEAD
    StartResponse *sr;
} Writer;

/* Validate and look up status and headers in the shared caches (wsgi.build_response's
 * rules: the Python functions raise the same AppError for anything invalid). */
static int response_parts(PyObject *status, PyObject *headers, PyObject **st_out, PyObject **hp_out) {
    PyObject *st = NULL, *hp = NULL;
    if (PyUnicode_CheckExact(status)) {
        st = PyDict_GetItemWithError(status_cache, status);
        if (st == NULL && PyErr_Occurred()) return -1;
        Py_XINCREF(st);
    }
    if (st == NULL) {
        st = PyObject_CallOneArg(parse_status, status);
        if (st == NULL) return -1;
    }
    if (PyList_CheckExact(headers)) {
        PyObject *key = PyList_AsTuple(headers);
        if (key == NULL) {
            Py_DECREF(st);
            return -1;
        }
        hp = PyDict_GetItemWithError(headers_cache, key);
        Py_DECREF(key);
        if (hp == NULL && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                Py_DECREF(st);
                return -1;
            }
            PyErr_Clear(); /* unhashable: header_parts reports the bad item */
        }
        Py_XINCREF(hp);
    }
    if (hp == NULL) {
        hp = PyObject_CallOneArg(header_parts, headers);
        if (hp == NULL) {
            Py_DECREF(st);
            return -1;
        }
    }
    if (!PyTuple_CheckExact(st) || PyTuple_GET_SIZE(st) != 2 || !PyTuple_CheckExact(hp) ||
        PyTuple_GET_SIZE(hp) != 4) {
        Py_DECREF(st);
        Py_DECREF(hp);
        PyErr_SetString(PyExc_SystemError, "rapidwsgi._cfast: unexpected response parts");
        return -1;
    }
    *st_out = st;
    *hp_out = hp;
    return 0;
}

static PyObject *sr_start(StartResponse *self, PyObject *status, PyObject *headers, PyObject *exc_info) {
    /* bridge.Exchange.start_response: with exc_info, a response not yet sent is
     * replaced (nothing is sent while the application runs here); without it, a
     * second call is an error. */
    if (exc_info == Py_None && self->st != NULL) {
        PyErr_SetString(AppError, "start_response() called a second time without exc_info");
        return NULL;
    }
    PyObject *st, *hp;
    if (response_parts(status, headers, &st, &hp) < 0) return NULL;
    Py_XSETREF(self->st, st);
    Py_XSETREF(self->hp, hp);
    Writer *w = PyObject_New(Writer, &Writer_Type);
    if (w == NULL) return NULL;
    w->sr = (StartResponse *)Py_NewRef(self);
    return (PyObject *)w;
}

static PyObject *sr_call(PyObject *op, PyObject *args, PyObject *kwargs) {
    StartResponse *self = (StartResponse *)op;
    static char *kwlist[] = {"status", "headers", "exc_info", NULL};
    PyObject *status, *headers, *exc_info = Py_None;
    if (self->exchange != NULL) {
        /* Handed over (a generator calling start_response late, exc_info after write()):
         * the Python exchange owns the response from here on. */
        PyObject *meth = PyObject_GetAttr(self->exchange, s_start_response);
        if (meth == NULL) return NULL;
        PyObject *r = PyObject_Call(meth, args, kwargs);
        Py_DECREF(meth);
        return r;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:start_response", kwlist, &status, &headers, &exc_info))
        return NULL;
    return sr_start(self, status, headers, exc_info);
}

/* The common call, start_response(status, headers[, exc_info]) by position, without
 * argument parsing; anything else goes through sr_call. */
static PyObject *sr_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    StartResponse *self = (StartResponse *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && self->exchange == NULL && (nargs == 2 || nargs == 3))
        return sr_start(self, args[0], args[1], nargs == 3 ? args[2] : Py_None);
    PyObject *tuple = PyTuple_New(nargs);
    if (tuple == NULL) return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++) PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    PyObject *kwargs = NULL;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        kwargs = PyDict_New();
        if (kwargs == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                Py_DECREF(tuple);
                Py_DECREF(kwargs);
                return NULL;
            }
        }
    }
    PyObject *r = sr_call(op, tuple, kwargs);
    Py_DECREF(tuple);
    Py_XDECREF(kwargs);
    return r;
}

static PyObject *promote(StartResponse *sr);

static PyObject *writer_call(PyObject *op, PyObject *args, PyObject *kwargs) {
    StartResponse *sr = ((Writer *)op)->sr;
    if (sr->exchange == NULL) {
        if (sr->st == NULL) {
            PyErr_SetString(AppError, "write() called before start_response()");
            return NULL;
        }
        if (sr->head == NULL) {
            PyErr_SetString(AppError, "write() called after the response ended");
            return NULL;
        }
        /* The legacy write(): the Python exchange takes the request over now. */
        PyObject *ex = promote(sr);
        if (ex == NULL) return NULL;
        Py_DECREF(ex);
    }
    PyObject *write = PyObject_GetAttr(sr->exchange, s_write);
    if (write == NULL) return NULL;
    PyObject *r = PyObject_Call(write, args, kwargs);
    Py_DECREF(write);
    return r;
}

static void writer_dealloc(PyObject *op) {
    Py_XDECREF(((Writer *)op)->sr);
    PyObject_Free(op);
}

static PyTypeObject Writer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rapidwsgi._cfast.write",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = writer_dealloc,
    .tp_call = writer_call,
};

static int sr_traverse(PyObject *op, visitproc visit, void *arg) {
    StartResponse *self = (StartResponse *)op;
    Py_VISIT(self->st);
    Py_VISIT(self->hp);
    Py_VISIT(self->exchange);
    Py_VISIT(self->fast);
    return 0;
}

static int sr_clear(PyObject *op) {
    StartResponse *self = (StartResponse *)op;
    Py_CLEAR(self->st);
    Py_CLEAR(self->hp);
    Py_CLEAR(self->exchange);
    Py_CLEAR(self->fast);
    return 0;
}

static void sr_dealloc(PyObject *op) {
    PyObject_GC_UnTrack(op);
    sr_clear(op);
    PyObject_GC_Del(op);
}

static PyTypeObject StartResponse_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rapidwsgi._cfast.start_response",
    .tp_basicsize = sizeof(StartResponse),
    .tp_vectorcall_offset = offsetof(StartResponse, vectorcall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_dealloc = sr_dealloc,
    .tp_traverse = sr_traverse,
    .tp_clear = sr_clear,
    .tp_call = sr_call,
};

/* ------------------------------------------------------------------ Fast: one connection */

typedef struct {
    PyObject_HEAD
    PyObject *conn;        /* the HTTPConnection (its _c_* hooks) */
    PyObject *app;
    PyObject *base;        /* the connection's base environ (shared, updated in place) */
    PyObject *write;       /* transport.write */
    PyObject *loop;
    PyObject *base_context; /* ctx.base_context: each application call runs in a copy */
    PyObject *on_done;     /* ctx.on_request_done or None */
    PyObject *ctx;         /* the ServerContext: its shutting_down flag */
    StartResponse *sr;     /* reused while nothing else holds it */
    PyObject *static_prefixes; /* --static: tuples of str (StaticFiles.prefixes, .bares) */
    PyObject *static_bares;    /* or NULL without mounts */
    PyObject *static_quick;    /* StaticFiles.quick (or NULL): the cached common answers */
    PyObject *shed;            /* ServerContext.shed_quick (or NULL): threaded mode's 503 */
    Meter *meter;              /* --metrics-bind / --statsd-host: this worker's slot, or NULL */
    Limits limits;
} Fast;

static PyObject *new_sr(Fast *fast) {
    StartResponse *sr = PyObject_GC_New(StartResponse, &StartResponse_Type);
    if (sr == NULL) return NULL;
    sr->vectorcall = sr_vectorcall;
    sr->st = sr->hp = NULL;
    sr->exchange = NULL;
    sr->fast = Py_NewRef(fast);
    sr->head = NULL;
    sr->environ = sr->context = sr->date_server = NULL;
    sr->started = 0;
    PyObject_GC_Track(sr);
    return (PyObject *)sr;
}

/* Build the Response the Python path would hold (new reference; None if no start_response). */
static PyObject *make_response(StartResponse *sr, PyObject *date_server) {
    if (sr->st == NULL) Py_RETURN_NONE;
    PyObject *block = PyTuple_GET_ITEM(sr->hp, 0);
    Py_ssize_t add = PyLong_AsSsize_t(PyTuple_GET_ITEM(sr->hp, 3));
    if (add < 0 && PyErr_Occurred()) return NULL;
    if (!PyTuple_Check(date_server) || add >= PyTuple_GET_SIZE(date_server) || !PyBytes_Check(block)) {
        PyErr_SetString(PyExc_SystemError, "rapidwsgi._cfast: bad date_server");
        return NULL;
    }
    PyObject *ds = PyTuple_GET_ITEM(date_server, add);
    Py_ssize_t bl = PyBytes_GET_SIZE(block), dl = PyBytes_GET_SIZE(ds);
    PyObject *headers = PyBytes_FromStringAndSize(NULL, bl + dl);
    if (headers == NULL) return NULL;
    memcpy(PyBytes_AS_STRING(headers), PyBytes_AS_STRING(block), bl);
    memcpy(PyBytes_AS_STRING(headers) + bl, PyBytes_AS_STRING(ds), dl);
    PyObject *r = PyObject_CallFunctionObjArgs(Response_type, PyTuple_GET_ITEM(sr->st, 0), PyTuple_GET_ITEM(sr->st, 1),
                                               headers, PyTuple_GET_ITEM(sr->hp, 1), PyTuple_GET_ITEM(sr->hp, 2), NULL);
    Py_DECREF(headers);
    return r;
}


/* Hand the running request to the Python exchange (write() or after the app returned):
 * conn._c_exchange(request, environ, context, response) -> Exchange. */
static PyObject *promote(StartResponse *sr) {
    Fast *fast = (Fast *)sr->fast;
    if (fast == NULL || fast->conn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "rapidwsgi._cfast: the connection is gone");
        return NULL;
    }
    PyObject *req = make_request(sr->head);
    if (req == NULL) return NULL;
    PyObject *resp = make_response(sr, sr->date_server);
    if (resp == NULL) {
        Py_DECREF(req);
        return NULL;
    }
    /* The meter's start, so that the Python path times the whole request. */
    PyObject *started = PyLong_FromUnsignedLongLong(sr->started);
    if (started == NULL) {
        Py_DECREF(req);
        Py_DECREF(resp);
        return NULL;
    }
    PyObject *ex =
        PyObject_CallMethodObjArgs(fast->conn, s_c_exchange, req, sr->environ, sr->context, resp, started, NULL);
    Py_DECREF(started);
    Py_DECREF(req);
    Py_DECREF(resp);
    if (ex == NULL) return NULL;
    Py_XSETREF(sr->exchange, Py_NewRef(ex));
    return ex;
}

static int fast_traverse(PyObject *op, visitproc visit, void *arg) {
    Fast *self = (Fast *)op;
    Py_VISIT(self->conn);
    Py_VISIT(self->app);
    Py_VISIT(self->base);
    Py_VISIT(self->write);
    Py_VISIT(self->loop);
    Py_VISIT(self->base_context);
    Py_VISIT(self->on_done);
    Py_VISIT(self->ctx);
    Py_VISIT(self->sr);
    Py_VISIT(self->static_prefixes);
    Py_VISIT(self->static_bares);
    Py_VISIT(self->static_quick);
    Py_VISIT(self->shed);
    Py_VISIT(self->meter);
    return 0;
}

static int fast_clear(PyObject *op) {
    Fast *self = (Fast *)op;
    Py_CLEAR(self->conn);
    Py_CLEAR(self->app);
    Py_CLEAR(self->base);
    Py_CLEAR(self->write);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->base_context);
    Py_CLEAR(self->on_done);
    Py_CLEAR(self->ctx);
    Py_CLEAR(self->sr);
    Py_CLEAR(self->static_prefixes);
    Py_CLEAR(self->static_bares);
    Py_CLEAR(self->static_quick);
    Py_CLEAR(self->shed);
    Py_CLEAR(self->meter);
    return 0;
}

static void fast_dealloc(PyObject *op) {
    PyObject_GC_UnTrack(op);
    fast_clear(op);
    PyObject_GC_Del(op);
}

static PyTypeObject Fast_Type;

/* Fast(conn, ctx, app, base, write, loop, base_context, on_done, max_line, max_fields,
 * max_field_size, static_prefixes, static_bares, static_quick, meter, shed), by position:
 * one per connection, so without argument parsing. */
static PyObject *fast_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs != 16 || !(args[14] == Py_None || Py_IS_TYPE(args[14], &Meter_Type)) || !PyDict_Check(args[3]) ||
        !(args[11] == Py_None || PyTuple_CheckExact(args[11])) ||
        !(args[12] == Py_None || PyTuple_CheckExact(args[12]))) {
        PyErr_SetString(PyExc_TypeError,
                        "Fast(conn, ctx, app, base: dict, write, loop, base_context, on_done, max_line, max_fields, "
                        "max_field_size, static_prefixes: tuple | None, static_bares: tuple | None, "
                        "static_quick, meter: Meter | None, shed)");
        return NULL;
    }
    for (int t = 11; t <= 12; t++) {
        if (args[t] == Py_None) continue;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[t]); i++) {
            if (!PyUnicode_Check(PyTuple_GET_ITEM(args[t], i))) {
                PyErr_SetString(PyExc_TypeError, "Fast(): static prefixes must be str");
                return NULL;
            }
        }
    }
    Py_ssize_t lim[3];
    for (int i = 0; i < 3; i++) {
        lim[i] = PyLong_AsSsize_t(args[8 + i]);
        if (lim[i] == -1 && PyErr_Occurred()) return NULL;
    }
    Fast *self = (Fast *)((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, 0);
    if (self == NULL) return NULL;
    self->conn = Py_NewRef(args[0]);
    self->ctx = Py_NewRef(args[1]);
    self->app = Py_NewRef(args[2]);
    self->base = Py_NewRef(args[3]);
    self->write = Py_NewRef(args[4]);
    self->loop = Py_NewRef(args[5]);
    if (!PyContext_CheckExact(args[6])) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_TypeError, "Fast(): base_context must be a contextvars.Context");
        return NULL;
    }
    self->base_context = Py_NewRef(args[6]);
    self->on_done = args[7] == Py_None ? NULL : Py_NewRef(args[7]);
    self->static_prefixes = args[11] == Py_None ? NULL : Py_NewRef(args[11]);
    self->static_bares = args[12] == Py_None ? NULL : Py_NewRef(args[12]);
    self->static_quick = args[13] == Py_None ? NULL : Py_NewRef(args[13]);
    self->meter = args[14] == Py_None ? NULL : (Meter *)Py_NewRef(args[14]);
    self->shed = args[15] == Py_None ? NULL : Py_NewRef(args[15]);
    self->limits.max_line = lim[0];
    self->limits.max_fields = lim[1];
    self->limits.max_field_size = lim[2];
    return (PyObject *)self;
}


static char *fmt_len(char *end, Py_ssize_t v) {
    /* decimal digits of v, written backwards ending at end; returns the start */
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

enum { DONE_KEEP, DONE_CLOSE, HANDED };

/* Serialise and write the response of a list/tuple result, as connection.send_head
 * with protocols/base.py framing would. Returns DONE_KEEP / DONE_CLOSE, HANDED when the
 * Python exchange must decide (length mismatch, non-bytes items), -1 on error. */
/* ... *sent: the status and the body bytes written, for the meter. */
static int respond(Fast *fast, const Head *h, PyObject *st, PyObject *hp, PyObject *result, PyObject *date_server,
                   long *status_out, Py_ssize_t *sent) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(result);
    PyObject **items = PySequence_Fast_ITEMS(result);
    Py_ssize_t body_len = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_CheckExact(items[i])) return HANDED;
        body_len += PyBytes_GET_SIZE(items[i]);
    }
    long status = PyLong_AsLong(PyTuple_GET_ITEM(st, 0));
    PyObject *status_line = PyTuple_GET_ITEM(st, 1);
    PyObject *block = PyTuple_GET_ITEM(hp, 0);
    PyObject *cl_obj = PyTuple_GET_ITEM(hp, 1);
    int app_close = PyObject_IsTrue(PyTuple_GET_ITEM(hp, 2));
    Py_ssize_t add = PyLong_AsSsize_t(PyTuple_GET_ITEM(hp, 3));
    if (status == -1 || app_close < 0 || add < 0 || !PyTuple_CheckExact(date_server) ||
        add >= PyTuple_GET_SIZE(date_server)) {
        if (PyErr_Occurred()) return -1;
        PyErr_SetString(PyExc_SystemError, "rapidwsgi._cfast: bad response parts");
        return -1;
    }
    PyObject *ds = PyTuple_GET_ITEM(date_server, add);
    Py_ssize_t length = -1; /* -1: none */
    if (cl_obj != Py_None) {
        length = PyLong_AsSsize_t(cl_obj);
        if (length < 0) {
            if (PyErr_Occurred()) PyErr_Clear();
            return HANDED;
        }
        if (body_len > length) return HANDED; /* bridge._overflow logs and truncates */
    } else if (status != 304) {
        length = body_len; /* RFC 9110 §8.6 (bridge._send_all) */
    }
    /* Framing, RFC 9112 §6 / protocols/base._begin_response. */
    int send_body = 0, cl_line = 0;
    if (status == 204) {
    } else if (status == 304) {
        cl_line = length >= 0;
    } else {
        cl_line = 1;
        send_body = h->method != M_HEAD;
    }
    if (send_body && body_len != length) return HANDED; /* too short: the exchange aborts */
    int keep = h->keep_alive && !app_close;
    char clbuf[48];
    char *cl_start = clbuf + sizeof clbuf;
    if (cl_line) {
        static const char tail[] = "\r\n";
        cl_start -= 2;
        memcpy(cl_start, tail, 2);
        cl_start = fmt_len(cl_start, length);
        cl_start -= 16;
        memcpy(cl_start, "Content-Length: ", 16);
    }
    Py_ssize_t cl_n = clbuf + sizeof clbuf - cl_start;
    const char *conn_line = !keep ? "Connection: close\r\n" : !h->v11 ? "Connection: keep-alive\r\n" : "";
    Py_ssize_t conn_n = (Py_ssize_t)strlen(conn_line);
    Py_ssize_t sl = PyBytes_GET_SIZE(status_line), bl = PyBytes_GET_SIZE(block), dl = PyBytes_GET_SIZE(ds);
    Py_ssize_t head_len = 9 + sl + 2 + bl + dl + cl_n + conn_n + 2;
    Py_ssize_t wire_body = send_body ? body_len : 0;
    /* One write for head and body unless the body is large (as connection.send_head). */
    int together = wire_body <= 16384;
    PyObject *out = PyBytes_FromStringAndSize(NULL, head_len + (together ? wire_body : 0));
    if (out == NULL) return -1;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, "HTTP/1.1 ", 9);
    o += 9;
    memcpy(o, PyBytes_AS_STRING(status_line), sl);
    o += sl;
    *o++ = '\r';
    *o++ = '\n';
    memcpy(o, PyBytes_AS_STRING(block), bl);
    o += bl;
    memcpy(o, PyBytes_AS_STRING(ds), dl);
    o += dl;
    memcpy(o, cl_start, cl_n);
    o += cl_n;
    memcpy(o, conn_line, conn_n);
    o += conn_n;
    *o++ = '\r';
    *o++ = '\n';
    if (together && wire_body) {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t k = PyBytes_GET_SIZE(items[i]);
            memcpy(o, PyBytes_AS_STRING(items[i]), k);
            o += k;
        }
    }
    PyObject *r = PyObject_CallOneArg(fast->write, out);
    Py_DECREF(out);
    if (r == NULL) return -1;
    Py_DECREF(r);
    if (!together) {
        PyObject *body = n == 1 ? Py_NewRef(items[0]) : PyObject_CallMethod(b_empty, "join", "O", result);
        if (body == NULL) return -1;
        r = PyObject_CallOneArg(fast->write, body);
        Py_DECREF(body);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    *status_out = status;
    *sent = wire_body;
    return keep ? DONE_KEEP : DONE_CLOSE;
}

/* StaticFiles.claims in C: PATH_INFO starts with a mount's prefix or is a mount's bare
 * path. 1 claimed, 0 not, -1 error. */
static int static_claims(Fast *self, PyObject *env) {
    PyObject *path = PyDict_GetItemWithError(env, s_PATH_INFO); /* borrowed */
    if (path == NULL) return PyErr_Occurred() ? -1 : 0;
    if (!PyUnicode_Check(path)) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->static_prefixes); i++) {
        Py_ssize_t m = PyUnicode_Tailmatch(path, PyTuple_GET_ITEM(self->static_prefixes, i), 0, PY_SSIZE_T_MAX, -1);
        if (m != 0) return m < 0 ? -1 : 1;
    }
    if (self->static_bares != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->static_bares); i++) {
            int eq = PyUnicode_Compare(path, PyTuple_GET_ITEM(self->static_bares, i));
            if (eq == 0) return 1;
            if (eq == -1 && PyErr_Occurred()) return -1;
        }
    }
    return 0;
}

static PyObject *call_hook3(PyObject *conn, PyObject *name, PyObject *a, PyObject *b, PyObject *c) {
    return PyObject_CallMethodObjArgs(conn, name, a, b, c, NULL);
}

/* Fast.serve(data, date_server, inline) -> int: the offset of the first byte not
 * consumed (len(data) when everything was served). See the file's contract. */
static PyObject *fast_serve(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
    Fast *self = (Fast *)op;
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "serve(data: bytes, date_server, inline)");
        return NULL;
    }
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "serve() after clear()");
        return NULL;
    }
    PyObject *data = args[0], *date_server = args[1];
    int inline_ok = PyObject_IsTrue(args[2]);
    if (inline_ok < 0) return NULL;
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data), off = 0;
    Head head;
    /* Our own references for the whole call: the connection may clear us (fast.clear())
     * from code the application or a hook runs. */
    Py_INCREF(self);
    Py_INCREF(data);
    PyObject *conn = Py_NewRef(self->conn);
    PyObject *ret = NULL;
    Meter *meter = self->meter;
    while (off < len) {
        Py_ssize_t n = parse_one(buf + off, len - off, &self->limits, &head);
        if (n == 0) break; /* declined: the reference parser takes it from here */
        /* The meter's clock starts once the head is in (as HTTPConnection._begin_exchange). */
        uint64_t t0 = meter != NULL ? now_ns() : 0;
        long status = 0;
        Py_ssize_t sent = 0;
        PyObject *env = build_environ(self->base, &head);
        if (env == NULL) goto error;
        off += n;
        if (head.forwarded) {
            /* conn._c_forwarded(environ): stage 4, wsgi.forward_environ (Python) */
            PyObject *r = PyObject_CallMethodOneArg(conn, s_c_forwarded, env);
            if (r == NULL) {
                Py_DECREF(env);
                goto error;
            }
            Py_DECREF(r);
        }
        int claimed = 0;
        if (self->static_prefixes != NULL) {
            claimed = static_claims(self, env);
            if (claimed < 0) {
                Py_DECREF(env);
                goto error;
            }
        }
        /* A claimed request: StaticFiles.quick; else, threaded: ServerContext.shed_quick,
         * the 503 of an overloaded pool (None when a thread will take it). */
        PyObject *quick_fn = claimed ? self->static_quick : !inline_ok ? self->shed : NULL;
        if (quick_fn != NULL) {
            /* (With --threads too: no application code runs, and the connection has no
             * exchange in flight while serve() runs.)
             * StaticFiles.quick(environ): a cached small file's 200 or 304 as
             * ((code, status_line), (block, length, close, add), [body]) in the shapes
             * start_response's caches hold, written like an application's response; or
             * None: StaticFiles.respond decides, through the Python machinery. */
            int outcome = HANDED;
            PyObject *q = PyObject_CallOneArg(quick_fn, env);
            if (q == NULL) {
                Py_DECREF(env);
                goto error;
            }
            if (q != Py_None) {
                PyObject *st = NULL, *hp = NULL, *body = NULL;
                if (PyTuple_CheckExact(q) && PyTuple_GET_SIZE(q) == 3) {
                    st = PyTuple_GET_ITEM(q, 0);
                    hp = PyTuple_GET_ITEM(q, 1);
                    body = PyTuple_GET_ITEM(q, 2);
                }
                if (st == NULL || !PyTuple_CheckExact(st) || PyTuple_GET_SIZE(st) != 2 ||
                    !PyBytes_CheckExact(PyTuple_GET_ITEM(st, 1)) || !PyTuple_CheckExact(hp) ||
                    PyTuple_GET_SIZE(hp) != 4 || !PyBytes_CheckExact(PyTuple_GET_ITEM(hp, 0)) ||
                    !PyList_CheckExact(body)) {
                    PyErr_SetString(PyExc_SystemError, "rapidwsgi._cfast: bad StaticFiles.quick() answer");
                    outcome = -1;
                } else {
                    /* as for an application's response: a graceful stop that has begun
                     * closes (the Python path does that) */
                    PyObject *stopping = PyObject_GetAttr(self->ctx, s_shutting_down);
                    int stop = stopping == NULL ? -1 : PyObject_IsTrue(stopping);
                    Py_XDECREF(stopping);
                    outcome = stop < 0 ? -1 : stop ? HANDED : respond(self, &head, st, hp, body, date_server, &status, &sent);
                }
            }
            Py_DECREF(q);
            if (outcome < 0) {
                Py_DECREF(env);
                goto error;
            }
            if (outcome != HANDED) {
                Py_DECREF(env);
                if (meter != NULL)
                    meter_request(meter, 0, meter_method[head.method], status, now_ns() - t0, 0, (uint64_t)sent);
                if (outcome == DONE_CLOSE) {
                    PyObject *r = PyObject_CallMethodNoArgs(conn, s_c_closed);
                    if (r == NULL) goto error;
                    Py_DECREF(r);
                    off = len; /* bytes after the last message are ignored (RFC 9112 §9.6) */
                    break;
                }
                if (self->on_done != NULL) {
                    PyObject *r = PyObject_CallNoArgs(self->on_done);
                    if (r == NULL) goto error;
                    Py_DECREF(r);
                }
                if (self->conn == NULL) break;
                continue;
            }
        }
        if (!inline_ok || claimed) {
            /* Threaded (or a helper holds the gate): parsed and built here, run there.
             * Under a --static mount: answered by connection._dispatch (static.py). */
            PyObject *req = make_request(&head);
            if (req == NULL) {
                Py_DECREF(env);
                goto error;
            }
            PyObject *r = PyObject_CallMethodObjArgs(conn, s_c_dispatch, req, env, NULL);
            Py_DECREF(req);
            Py_DECREF(env);
            if (r == NULL) goto error;
            Py_DECREF(r);
            break;
        }
        /* Run the application as connection._run_step does: in a fresh copy of the
         * current context, with the running loop hidden (Django refuses synchronous
         * database calls when it sees one). */
        StartResponse *sr = self->sr;
        if (sr == NULL || Py_REFCNT(sr) != 1) {
            Py_XDECREF(self->sr);
            self->sr = sr = (StartResponse *)new_sr(self);
            if (sr == NULL) {
                Py_DECREF(env);
                goto error;
            }
        }
        Py_INCREF(sr); /* released at the end of this request, whatever clears self->sr */
        Py_CLEAR(sr->st);
        Py_CLEAR(sr->hp);
        Py_CLEAR(sr->exchange);
        PyObject *context = PyContext_Copy(self->base_context);
        if (context == NULL) {
            Py_DECREF(sr);
            Py_DECREF(env);
            goto error;
        }
        sr->head = &head;
        sr->environ = env;
        sr->context = context;
        sr->date_server = date_server;
        sr->started = t0;
        PyObject *result = NULL;
        PyObject *r = PyObject_CallOneArg(set_running_loop, Py_None);
        if (r == NULL) goto app_error;
        Py_DECREF(r);
        if (PyContext_Enter(context) < 0) {
            r = PyObject_CallOneArg(set_running_loop, self->loop);
            Py_XDECREF(r);
            goto app_error;
        }
        if (meter != NULL) meter_begin(meter, 0, meter_method_name[head.method], head.target, head.path_len, t0);
        PyObject *callargs[2] = {env, (PyObject *)sr};
        result = PyObject_Vectorcall(self->app, callargs, 2, NULL);
        /* Leave the context and restore the loop without losing the app's exception. */
        PyObject *raised = result == NULL ? take_exception() : NULL;
        int exit_rc = PyContext_Exit(context);
        r = exit_rc < 0 ? NULL : PyObject_CallOneArg(set_running_loop, self->loop);
        if (r == NULL) {
            Py_XDECREF(raised);
            Py_XDECREF(result);
            goto app_error;
        }
        Py_DECREF(r);
        int outcome = HANDED;
        PyObject *exc = NULL;
        if (result == NULL) {
            if (raised == NULL || !PyObject_TypeCheck(raised, (PyTypeObject *)PyExc_Exception)) {
                restore_exception(raised); /* KeyboardInterrupt, SystemExit: propagate */
                goto app_error;
            }
            exc = raised;
        } else if (sr->exchange == NULL && sr->st != NULL && self->write != NULL &&
                   (PyList_CheckExact(result) || PyTuple_CheckExact(result))) {
            /* A graceful stop may have begun while the application ran (the signal
             * handler sets the flag): then connection.send_head closes, and corks for
             * a pooling peer; the Python path does that. */
            PyObject *stopping = PyObject_GetAttr(self->ctx, s_shutting_down);
            int stop = stopping == NULL ? -1 : PyObject_IsTrue(stopping);
            Py_XDECREF(stopping);
            if (stop < 0) {
                Py_DECREF(result);
                goto app_error;
            }
            if (!stop) outcome = respond(self, &head, sr->st, sr->hp, result, date_server, &status, &sent);
            if (outcome < 0) {
                Py_DECREF(result);
                goto app_error;
            }
        }
        if (outcome == HANDED) {
            /* conn._c_adopt(exchange, result, exc): the Python exchange continues
             * exactly where bridge.Exchange.start would after the application call. */
            PyObject *ex = sr->exchange != NULL ? Py_NewRef(sr->exchange) : promote(sr);
            if (ex == NULL) {
                Py_XDECREF(result);
                Py_XDECREF(exc);
                goto app_error;
            }
            sr->head = NULL;
            sr->environ = sr->context = sr->date_server = NULL;
            Py_DECREF(sr);
            r = call_hook3(conn, s_c_adopt, ex, result ? result : Py_None, exc ? exc : Py_None);
            Py_DECREF(ex);
            Py_XDECREF(result);
            Py_XDECREF(exc);
            Py_DECREF(context);
            Py_DECREF(env);
            if (r == NULL) goto error;
            Py_DECREF(r);
            break; /* the rest of the bytes wait in the Python parser */
        }
        sr->head = NULL;
        sr->environ = sr->context = sr->date_server = NULL;
        Py_CLEAR(sr->st);
        Py_CLEAR(sr->hp);
        Py_DECREF(sr);
        Py_DECREF(result);
        Py_DECREF(context);
        Py_DECREF(env);
        if (meter != NULL) {
            meter_end(meter, 0);
            meter_request(meter, 0, meter_method[head.method], status, now_ns() - t0, 0, (uint64_t)sent);
        }
        if (outcome == DONE_CLOSE) {
            /* conn._c_closed(): the wire must close after this response. */
            r = PyObject_CallMethodNoArgs(conn, s_c_closed);
            if (r == NULL) goto error;
            Py_DECREF(r);
            off = len; /* bytes after the last message are ignored (RFC 9112 §9.6) */
            break;
        }
        if (self->on_done != NULL) {
            r = PyObject_CallNoArgs(self->on_done);
            if (r == NULL) goto error;
            Py_DECREF(r);
        }
        if (self->conn == NULL) break; /* cleared while the application ran */
        continue;
    app_error:
        if (meter != NULL) meter_end(meter, 0);
        sr->head = NULL;
        sr->environ = sr->context = sr->date_server = NULL;
        Py_DECREF(sr);
        Py_DECREF(context);
        Py_DECREF(env);
        goto error;
    }
    ret = PyLong_FromSsize_t(off);
error:
    Py_DECREF(conn);
    Py_DECREF(data);
    Py_DECREF(self);
    return ret;
}

static PyObject *fast_clear_method(PyObject *op, PyObject *unused) {
    (void)unused;
    fast_clear(op);
    Py_RETURN_NONE;
}

static PyMethodDef fast_methods[] = {
    {"serve", (PyCFunction)(void (*)(void))fast_serve, METH_FASTCALL, "serve(data, date_server, inline) -> offset"},
    {"clear", fast_clear_method, METH_NOARGS, "Drop every reference (connection_lost)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Fast_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rapidwsgi._cfast.Fast",
    .tp_basicsize = sizeof(Fast),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = fast_dealloc,
    .tp_traverse = fast_traverse,
    .tp_clear = fast_clear,
    .tp_methods = fast_methods,
    .tp_vectorcall = fast_vectorcall,
};

/* ------------------------------------------------------------------ module functions */

static PyObject *mod_parse_head(PyObject *mod, PyObject *args) {
    (void)mod;
    Py_buffer buf;
    Limits lim;
    if (!PyArg_ParseTuple(args, "y*nnn:parse_head", &buf, &lim.max_line, &lim.max_fields, &lim.max_field_size))
        return NULL;
    Head *h = PyMem_Malloc(sizeof(Head));
    if (h == NULL) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    Py_ssize_t n = parse_one(buf.buf, buf.len, &lim, h);
    PyObject *out;
    if (n == 0) {
        out = Py_NewRef(Py_None);
    } else {
        PyObject *req = make_request(h);
        out = req == NULL ? NULL : Py_BuildValue("(nN)", n, req);
    }
    PyMem_Free(h);
    PyBuffer_Release(&buf);
    return out;
}

/* presized(items, spare) -> dict: ``items`` in a table with room for ``spare`` more
 * keys, so that copies of it (dict.copy clones the table) take that many without a
 * resize. (PyDict_Update into an empty dict would adopt the source's smaller table.) */
static PyObject *mod_presized(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 2 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "presized(items: dict, spare: int)");
        return NULL;
    }
    Py_ssize_t spare = PyLong_AsSsize_t(args[1]);
    if (spare < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "spare must be >= 0");
        return NULL;
    }
    PyObject *t = _PyDict_NewPresized(PyDict_GET_SIZE(args[0]) + spare);
    if (t == NULL) return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(args[0], &pos, &key, &value)) {
        if (PyDict_SetItem(t, key, value) < 0) {
            Py_DECREF(t);
            return NULL;
        }
    }
    return t;
}

static PyObject *mod_setup(PyObject *mod, PyObject *args, PyObject *kwargs) {
    (void)mod;
    static char *kwlist[] = {"request",       "response",      "parse_status",     "header_parts",
                             "status_cache",  "headers_cache", "app_error",        "set_running_loop",
                             NULL};
    PyObject *a[8];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO!O!OO:setup", kwlist, &a[0], &a[1], &a[2], &a[3],
                                     &PyDict_Type, &a[4], &PyDict_Type, &a[5], &a[6], &a[7]))
        return NULL;
    Py_XSETREF(Request_type, Py_NewRef(a[0]));
    Py_XSETREF(Response_type, Py_NewRef(a[1]));
    Py_XSETREF(parse_status, Py_NewRef(a[2]));
    Py_XSETREF(header_parts, Py_NewRef(a[3]));
    Py_XSETREF(status_cache, Py_NewRef(a[4]));
    Py_XSETREF(headers_cache, Py_NewRef(a[5]));
    Py_XSETREF(AppError, Py_NewRef(a[6]));
    Py_XSETREF(set_running_loop, Py_NewRef(a[7]));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"presized", (PyCFunction)(void (*)(void))mod_presized, METH_FASTCALL,
     "presized(items, spare) -> a copy of items with room for spare more keys"},
    {"parse_head", mod_parse_head, METH_VARARGS,
     "parse_head(data, max_line, max_fields, max_field_size) -> (consumed, Request) | None"},
    {"setup", (PyCFunction)(void (*)(void))mod_setup, METH_VARARGS | METH_KEYWORDS,
     "Hand the Python side's types, caches and callables to the C path (once)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rapidwsgi._cfast",
    .m_doc = "The common HTTP/1.1 request path in C (see _cfast.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text)                                                                                         \
    do {                                                                                                          \
        if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;                                        \
    } while (0)

PyMODINIT_FUNC PyInit__cfast(void) {
    init_tables();
    INTERN(s_REQUEST_METHOD, "REQUEST_METHOD");
    INTERN(s_PATH_INFO, "PATH_INFO");
    INTERN(s_QUERY_STRING, "QUERY_STRING");
    INTERN(s_RAW_URI, "RAW_URI");
    INTERN(s_REQUEST_URI, "REQUEST_URI");
    INTERN(s_SERVER_PROTOCOL, "SERVER_PROTOCOL");
    INTERN(s_wsgi_input, "wsgi.input");
    INTERN(s_CONTENT_LENGTH, "CONTENT_LENGTH");
    INTERN(s_SCRIPT_NAME, "SCRIPT_NAME");
    INTERN(s_HTTP_COOKIE, "HTTP_COOKIE");
    INTERN(s_HTTP_11, "HTTP/1.1");
    INTERN(s_HTTP_10, "HTTP/1.0");
    INTERN(s_zero, "0");
    INTERN(s_empty, "");
    INTERN(s_sep_comma, ", ");
    INTERN(s_sep_cookie, "; ");
    INTERN(s_c_exchange, "_c_exchange");
    INTERN(s_c_adopt, "_c_adopt");
    INTERN(s_c_closed, "_c_closed");
    INTERN(s_c_dispatch, "_c_dispatch");
    INTERN(s_c_forwarded, "_c_forwarded");
    INTERN(s_write, "write");
    INTERN(s_start_response, "start_response");
    INTERN(s_authority, "authority");
    INTERN(s_content_length, "content_length");
    INTERN(s_chunked, "chunked");
    INTERN(s_keep_alive, "keep_alive");
    INTERN(s_expect_continue, "expect_continue");
    INTERN(s_forwarded, "forwarded");
    INTERN(kw_request, "request");
    INTERN(s_shutting_down, "shutting_down");
    if ((b_11 = PyBytes_FromString("1.1")) == NULL || (b_10 = PyBytes_FromString("1.0")) == NULL ||
        (b_empty = PyBytes_FromString("")) == NULL)
        return NULL;
    for (int i = 0; i < M_COUNT; i++) {
        INTERN(method_str[i], method_names[i]);
        if ((method_bytes[i] = PyBytes_FromString(method_names[i])) == NULL) return NULL;
    }
    if (PyType_Ready(&Writer_Type) < 0 || PyType_Ready(&StartResponse_Type) < 0 || PyType_Ready(&Fast_Type) < 0 ||
        PyType_Ready(&Meter_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Fast", (PyObject *)&Fast_Type) < 0 ||
        PyModule_AddObjectRef(m, "Meter", (PyObject *)&Meter_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
