/* Optional C accelerator (pitchey_trace._speedups), loaded by pitchey_trace/_accel.py.
 *
 * The common case of each per-span step, in C; anything unusual is handed to the Python code,
 * which stays the reference (the tests compare the two):
 *   request thread: Tracer.start_span (a C method, so pitchey_trace.span), and the Span
 *     methods __enter__, __exit__, set_attribute and end;
 *   export worker: take_chunk() (pop and sort a chunk of the queue), rollup_chunk() (the
 *     Rollups summary) and build_span_records() (sanitized schema-v1 records, as
 *     Sanitizer._span_record builds them, for spans with no events, links or status message
 *     whose attribute keys and values the sanitizer has already decided).
 *
 * Span fields are read and written through the slot offsets of the Span class (looked up once
 * by setup()). Nothing here is required: without a C compiler the package runs on Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#ifndef _WIN32
#include <pthread.h>
#endif

enum {
    F_TRACE_ID, F_SPAN_ID, F_PARENT, F_NAME, F_KIND, F_START, F_END, F_STATUS, F_MESSAGE,
    F_ATTRS, F_EVENTS, F_LINKS, F_FLAGS, F_STATE, F_BAGGAGE, F_LOCAL_ROOT, F_PIPE, F_TOKEN,
    F_LOCAL_ROOT_ID, F_DROPPED, F_PREV, F_COUNT
};
static const char *slot_names[F_COUNT] = {
    "trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns", "status",
    "status_message", "attributes", "events", "links", "trace_flags", "trace_state", "baggage",
    "local_root", "_pipe", "_token", "local_root_id", "_dropped", "_prev",
};
static PyObject *status_unset = NULL; /* StatusCode.UNSET */
static PyObject *no_items = NULL;     /* records.NO_ITEMS: the shared empty events/links list */
static Py_ssize_t slot_offset[F_COUNT];
static PyTypeObject *span_type = NULL;

/* Interned record keys. */
enum {
    K_TRACE_ID, K_SPAN_ID, K_PARENT, K_NAME, K_KIND, K_START, K_END, K_DURATION, K_STATUS,
    K_CATEGORY, K_ATTRIBUTES, K_EVENTS, K_LINKS, K_DROPPED_ATTRIBUTES, K_DROPPED_EVENTS,
    K_DROPPED_LINKS, K_COUNT
};
static const char *key_names[K_COUNT] = {
    "trace_id", "span_id", "parent_span_id", "name", "kind", "start_time_unix_nano",
    "end_time_unix_nano", "duration_ms", "status", "category", "attributes", "events", "links",
    "dropped_attributes_count", "dropped_events_count", "dropped_links_count",
};
static PyObject *keys[K_COUNT];
static PyObject *cat_names[4]; /* fast, normal, slow, very_slow */
/* Ints from here up (sanitize._CARD_MIN) are checked for card numbers by the Python builder. */
#define CARD_MIN 1000000000000LL

#define SLOT(obj, f) (*(PyObject **)((char *)(obj) + slot_offset[f]))

/* The offsets of the object slots `names` of class `cls` (a __slots__ class) into `out`;
 * -1 with TypeError when one is missing or not an object slot. */
static int
object_slot_offsets(PyObject *cls, const char *const *names, int count, Py_ssize_t *out)
{
    PyObject *dict = ((PyTypeObject *)cls)->tp_dict;
    for (int i = 0; i < count; i++) {
        PyObject *descr = PyDict_GetItemString(dict, names[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s has no object slot %s", ((PyTypeObject *)cls)->tp_name,
                         names[i]);
            return -1;
        }
        out[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    return 0;
}

/* Interned strings for `texts` into `out` (entries already set are kept); -1 on error. */
static int
intern_all(const char *const *texts, int count, PyObject **out)
{
    for (int i = 0; i < count; i++) {
        if (out[i] == NULL && (out[i] = PyUnicode_InternFromString(texts[i])) == NULL)
            return -1;
    }
    return 0;
}

static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyType_Check(args[0]) || !PyList_Check(args[2]) || PyList_GET_SIZE(args[2])) {
        PyErr_SetString(PyExc_TypeError, "setup() takes the Span class, StatusCode.UNSET and "
                                         "records.NO_ITEMS");
        return NULL;
    }
    PyObject *cls = args[0];
    if (object_slot_offsets(cls, slot_names, F_COUNT, slot_offset) < 0)
        return NULL;
    Py_INCREF(cls);
    Py_XSETREF(span_type, (PyTypeObject *)cls);
    Py_INCREF(args[1]);
    Py_XSETREF(status_unset, args[1]);
    /* The shared read-only empty list refers to nothing: untracked, records holding it are
     * still atomic for untrack_records(). */
    if (PyObject_GC_IsTracked(args[2]))
        PyObject_GC_UnTrack(args[2]);
    Py_INCREF(args[2]);
    Py_XSETREF(no_items, args[2]);
    Py_RETURN_NONE;
}

/* A new Span from its 13 given fields (name, kind, trace_id, span_id, parent_span_id,
 * trace_flags, trace_state, baggage, attributes, start_ns, local_root, pipe, local_root_id),
 * the rest at their start values: what Tracer._py_start_span does with one attribute store per
 * slot. */
static PyObject *
make_span(PyObject *const *fields)
{
    static const int order[13] = {
        F_NAME, F_KIND, F_TRACE_ID, F_SPAN_ID, F_PARENT, F_FLAGS, F_STATE, F_BAGGAGE, F_ATTRS,
        F_START, F_LOCAL_ROOT, F_PIPE, F_LOCAL_ROOT_ID,
    };
    PyObject *span = span_type->tp_alloc(span_type, 0);
    if (span == NULL)
        return NULL;
    for (int i = 0; i < 13; i++)
        SLOT(span, order[i]) = Py_NewRef(fields[i]);
    SLOT(span, F_END) = PyLong_FromLong(0);
    SLOT(span, F_STATUS) = Py_NewRef(status_unset);
    SLOT(span, F_MESSAGE) = Py_NewRef(Py_None);
    SLOT(span, F_EVENTS) = Py_NewRef(Py_None);
    SLOT(span, F_LINKS) = Py_NewRef(Py_None);
    SLOT(span, F_TOKEN) = Py_NewRef(Py_None);
    SLOT(span, F_DROPPED) = Py_NewRef(Py_None);
    SLOT(span, F_PREV) = Py_NewRef(Py_None);
    if (SLOT(span, F_END) == NULL) {
        Py_DECREF(span);
        return NULL;
    }
    return span;
}

/* ---------------------------------------------------------------------------------------
 * Request-thread methods installed on Span by install_methods(): __enter__, __exit__,
 * set_attribute and end. Each does what the Python method of the same name does for the
 * common case and calls Python for everything else (_on_exception, _reset_failed,
 * _set_attribute_slow, and the original end kept as _py_end).
 */
static PyObject *current_var = NULL;   /* pitchey_trace._context.CURRENT */
static PyObject *limits_cls = NULL;    /* pitchey_trace._span.Limits */
static PyObject *s_hot, *s_enqueue, *s_drop, *s_max_attributes, *s_on_exception, *s_reset_failed,
    *s_set_attribute_slow, *s_reenter, *s_restore_live, *s_old_value;
static PyObject *int_zero = NULL; /* the cached small int 0: an open span's end_ns */

/* Limits.max_attributes (-1 with an error set when it is not an int), remembered with the
 * class's version tag: CPython gives a class a new tag whenever it or a base class is
 * modified (configure() sets the class attribute), so an unchanged tag means the same value,
 * without an attribute lookup per span. */
static unsigned int limits_tag = 0;
static Py_ssize_t limits_max = 0;

static Py_ssize_t
max_attributes_limit(void)
{
    PyTypeObject *t = PyType_Check(limits_cls) ? (PyTypeObject *)limits_cls : NULL;
    if (t != NULL && limits_tag != 0 && t->tp_version_tag == limits_tag &&
        PyType_HasFeature(t, Py_TPFLAGS_VALID_VERSION_TAG))
        return limits_max;
    PyObject *obj = PyObject_GetAttr(limits_cls, s_max_attributes);
    if (obj == NULL)
        return -1;
    Py_ssize_t limit = PyLong_AsSsize_t(obj);
    int exact = PyLong_CheckExact(obj);
    Py_DECREF(obj);
    if (limit == -1 && PyErr_Occurred())
        return -1;
    /* (the tag the lookup above left, if any: a later change gives another one) */
    if (t != NULL && exact && PyType_HasFeature(t, Py_TPFLAGS_VALID_VERSION_TAG)) {
        limits_tag = t->tp_version_tag;
        limits_max = limit;
    }
    else
        limits_tag = 0;
    return limit;
}

/* A context token's fields, as CPython 3.7-3.13 lays them out (Include/internal/
 * pycore_context.h): tok_oldval is what a reset makes current again. The layout is checked
 * once against Token.old_value (probe_token_layout); when it does not match, the attribute is
 * read instead. */
typedef struct {
    PyObject_HEAD
    PyObject *tok_ctx;
    PyObject *tok_var;
    PyObject *tok_oldval;
    int tok_used;
} token_fields;
static int token_layout_ok = 0;
static PyObject *token_missing = NULL; /* Token.MISSING (tok_oldval is NULL for it) */

/* What resetting `token` (an exact contextvars.Token) makes current: a new reference
 * (Token.MISSING when the variable had no value), NULL with an error. */
static inline PyObject *
token_old_value(PyObject *token)
{
    if (token_layout_ok) {
        PyObject *old = ((token_fields *)token)->tok_oldval;
        return Py_NewRef(old != NULL ? old : token_missing);
    }
    return PyObject_GetAttr(token, s_old_value);
}

/* Checks token_fields against Token.old_value on two tokens of a private variable. */
static int
probe_token_layout(void)
{
    token_layout_ok = 0;
    if (token_missing == NULL &&
        (token_missing = PyObject_GetAttrString((PyObject *)&PyContextToken_Type, "MISSING")) == NULL)
        return -1;
    PyObject *var = PyContextVar_New("pitchey_trace._speedups.probe", NULL);
    if (var == NULL)
        return -1;
    PyObject *marker = PyList_New(0), *t1 = NULL, *t2 = NULL, *old1 = NULL;
    if (marker == NULL || (t1 = PyContextVar_Set(var, marker)) == NULL ||
        (t2 = PyContextVar_Set(var, Py_None)) == NULL || (old1 = PyObject_GetAttr(t1, s_old_value)) == NULL)
        goto done;
    token_layout_ok = Py_IS_TYPE(t2, &PyContextToken_Type) &&
                      sizeof(token_fields) <= (size_t)Py_TYPE(t2)->tp_basicsize &&
                      ((token_fields *)t2)->tok_var == var && ((token_fields *)t2)->tok_oldval == marker &&
                      ((token_fields *)t1)->tok_oldval == NULL && old1 == token_missing &&
                      ((token_fields *)t1)->tok_used == 0;
    if (PyContextVar_Reset(var, t2) < 0 || PyContextVar_Reset(var, t1) < 0)
        token_layout_ok = 0;
done:
    Py_XDECREF(old1);
    Py_XDECREF(t2);
    Py_XDECREF(t1);
    Py_XDECREF(marker);
    Py_DECREF(var);
    return PyErr_Occurred() ? -1 : 0;
}
/* The Python methods, kept by _accel.py: each C method calls its own for anything unusual
 * (keywords, a re-entered span, an odd argument), with the same arguments. */
static PyObject *s_py_end, *s_py_exit, *s_py_set_attribute;

/* self.<name>(*args, **kwargs): the same call on the Python method `name`. */
static PyObject *
call_python(PyObject *name, PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8];
    PyObject **call = total < 8 ? small : PyMem_Malloc(sizeof(PyObject *) * (size_t)(total + 1));
    if (call == NULL)
        return PyErr_NoMemory();
    call[0] = self;
    for (Py_ssize_t i = 0; i < total; i++)
        call[i + 1] = args[i];
    PyObject *r = PyObject_VectorcallMethod(name, call, (size_t)nargs + 1, kwnames);
    if (call != small)
        PyMem_Free(call);
    return r;
}

/* A start or end time the Span keeps as it is: an int in 0 < t < 2**64 (Python replaces any
 * other by now, and counts it). */
static int
valid_time(PyObject *t)
{
    return PyLong_CheckExact(t) && _PyLong_Sign(t) > 0 && _PyLong_NumBits(t) <= 64;
}

static PyObject *
now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
}

/* The Python methods would raise AttributeError on a Span whose slots were never set (made
 * with Span.__new__ and nothing else); so do these, instead of reading a NULL slot. */
static int
slots_set(PyObject *self, int a, int b, int c)
{
    int need[3] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        if (need[i] >= 0 && SLOT(self, need[i]) == NULL) {
            PyErr_Format(PyExc_AttributeError, "'Span' object has no attribute '%s'", slot_names[need[i]]);
            return 0;
        }
    }
    return 1;
}

static PyObject *
span_enter(PyObject *self, PyObject *unused)
{
    if (!slots_set(self, F_TOKEN, -1, -1))
        return NULL;
    PyObject *token = PyContextVar_Set(current_var, self);
    if (token == NULL)
        return NULL;
    if (SLOT(self, F_TOKEN) == Py_None) {
        Py_SETREF(SLOT(self, F_TOKEN), token);
        return Py_NewRef(self);
    }
    /* entered again before its block exited: Python keeps both tokens (Span._reenter) */
    PyObject *r = PyObject_CallMethodOneArg(self, s_reenter, token);
    Py_DECREF(token);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    return Py_NewRef(self);
}

/* Pipeline._hot: (queue.append, queue, max_queue_size, wake_at, _handoff), borrowed from the
 * new reference *hot, or 0 (no error) for a pipeline without it. */
static int
pipeline_hot(PyObject *pipe, PyObject **hot, PyObject **f)
{
    *hot = PyObject_GetAttr(pipe, s_hot);
    if (*hot == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    if (!PyTuple_CheckExact(*hot) || PyTuple_GET_SIZE(*hot) != 5 ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(*hot, 2)) || !PyLong_CheckExact(PyTuple_GET_ITEM(*hot, 3))) {
        Py_CLEAR(*hot);
        return 0;
    }
    for (int i = 0; i < 5; i++)
        f[i] = PyTuple_GET_ITEM(*hot, i);
    return 1;
}

/* Pipeline.enqueue, in C: append to the bounded queue (wake the worker at wake_at), else drop. */
static int
enqueue(PyObject *self)
{
    PyObject *pipe = SLOT(self, F_PIPE), *hot, *f[5];
    int got = pipeline_hot(pipe, &hot, f);
    if (got < 0)
        return -1;
    if (got) {
        /* the tuple is held: the calls below can run Python */
        Py_ssize_t n = PyObject_Length(f[1]);
        long long limit = PyLong_AsLongLong(f[2]), at = PyLong_AsLongLong(f[3]);
        PyObject *r = NULL;
        if (n < 0 || ((limit == -1 || at == -1) && PyErr_Occurred()))
            goto hot_done;
        if (n < limit) {
            /* A finished span only waits in the queue: untracked, the cycle collector neither
             * walks it nor promotes it to an old generation (which made full collections
             * frequent). Nothing a finished span refers to refers back to it once its context
             * token is gone. */
            PyObject *token = SLOT(self, F_TOKEN);
            if ((token == NULL || token == Py_None) && PyObject_GC_IsTracked(self))
                PyObject_GC_UnTrack(self);
            r = PyObject_CallOneArg(f[0], self);
            if (r != NULL && n + 1 == at) {
                Py_DECREF(r);
                r = PyObject_CallNoArgs(f[4]);
            }
        }
        else
            r = PyObject_CallMethodNoArgs(pipe, s_drop);
    hot_done:
        Py_DECREF(hot);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    /* a pipeline without _hot: its own enqueue() */
    PyObject *r = PyObject_CallMethodOneArg(pipe, s_enqueue, self);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
span_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 3 || kwnames != NULL)
        return call_python(s_py_exit, self, args, nargs, kwnames);
    PyObject *r;
    if (!slots_set(self, F_TOKEN, F_END, F_PIPE))
        return NULL;
    if (SLOT(self, F_TOKEN) != Py_None && !PyContextToken_CheckExact(SLOT(self, F_TOKEN)))
        return call_python(s_py_exit, self, args, nargs, NULL); /* a re-entered span's tokens */
    if (args[1] != Py_None) {
        r = PyObject_CallMethodOneArg(self, s_on_exception, args[1]);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    PyObject *token = SLOT(self, F_TOKEN);
    if (token != Py_None) {
        SLOT(self, F_TOKEN) = Py_NewRef(Py_None);
        /* What it found current, kept (_prev) for a span entered after it and exited after it
         * (out of order) not to make it current again once it has ended (_restore_live). */
        PyObject *prev = token_old_value(token);
        if (prev == NULL) {
            Py_DECREF(token);
            return NULL;
        }
        Py_XSETREF(SLOT(self, F_PREV), prev);
        int rc = PyContextVar_Reset(current_var, token);
        if (rc < 0) {
            if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
                Py_DECREF(token);
                return NULL;
            }
            PyErr_Clear();
            /* kept: the context that entered the span can still reset it by its own exit,
             * else the ended span stayed current there (the slot holds None: no ref lost) */
            Py_SETREF(SLOT(self, F_TOKEN), token);
            Py_INCREF(prev); /* (the call may change the slot) */
            r = PyObject_CallMethodOneArg(self, s_reset_failed, prev);
            Py_DECREF(prev);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
        }
        else {
            Py_DECREF(token);
            if (Py_TYPE(prev) == span_type && SLOT(prev, F_END) != int_zero) {
                /* an ended span made current again (an exit out of order): the Python method
                 * decides (end_ns is the cached 0 object while a span is open) */
                Py_INCREF(prev);
                r = PyObject_CallMethodOneArg(self, s_restore_live, prev);
                Py_DECREF(prev);
                if (r == NULL)
                    return NULL;
                Py_DECREF(r);
            }
        }
    }
    int ended = PyObject_IsTrue(SLOT(self, F_END));
    if (ended < 0)
        return NULL;
    if (!ended) {
        PyObject *end = now_ns();
        if (end == NULL)
            return NULL;
        Py_SETREF(SLOT(self, F_END), end);
        if (enqueue(self) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
span_set_attribute(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 2 || kwnames != NULL)
        return call_python(s_py_set_attribute, self, args, nargs, kwnames);
    PyObject *key = args[0], *value = args[1];
    if (!slots_set(self, F_ATTRS, F_END, -1))
        return NULL;
    PyObject *attrs = SLOT(self, F_ATTRS);
    PyTypeObject *vt = Py_TYPE(value);
    if ((vt == &PyUnicode_Type || vt == &PyLong_Type || vt == &PyBool_Type) &&
        PyUnicode_CheckExact(key) && PyUnicode_GET_LENGTH(key) > 0 && PyDict_CheckExact(attrs)) {
        int ended = PyObject_IsTrue(SLOT(self, F_END));
        if (ended < 0)
            return NULL;
        if (!ended) {
            Py_ssize_t limit = max_attributes_limit();
            if (limit == -1 && PyErr_Occurred())
                return NULL;
            int room = PyDict_GET_SIZE(attrs) < limit;
            if (!room) {
                room = PyDict_Contains(attrs, key);
                if (room < 0)
                    return NULL;
            }
            if (room) {
                if (PyDict_SetItem(attrs, key, value) < 0)
                    return NULL;
                Py_RETURN_NONE;
            }
        }
    }
    PyObject *call[3] = {self, key, value};
    return PyObject_VectorcallMethod(s_set_attribute_slow, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *
span_end(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *when = nargs >= 1 ? args[0] : Py_None;
    if (!slots_set(self, F_END, F_PIPE, -1))
        return NULL;
    int ended = PyObject_IsTrue(SLOT(self, F_END));
    if (ended < 0)
        return NULL;
    /* ended twice (warning), keywords or an odd or invalid time (counted): the Python method */
    if (ended || kwnames != NULL || nargs > 1 || (when != Py_None && !valid_time(when)))
        return call_python(s_py_end, self, args, nargs, kwnames);
    PyObject *end = when == Py_None ? now_ns() : Py_NewRef(when);
    if (end == NULL)
        return NULL;
    Py_SETREF(SLOT(self, F_END), end);
    if (enqueue(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef span_methods[] = {
    {"end", (PyCFunction)(void (*)(void))span_end, METH_FASTCALL | METH_KEYWORDS,
     "end($self, /, end_time_ns=None)\n--\n\nEnd the span (once; later calls warn and are "
     "ignored) and hand it to the pipeline (C accelerator)."},
    {"__enter__", span_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nMake the span current (C accelerator)."},
    {"__exit__", (PyCFunction)(void (*)(void))span_exit, METH_FASTCALL | METH_KEYWORDS,
     "__exit__($self, et, ev, tb)\n--\n\nRecord an escaping exception, restore the previous "
     "span, end this one (C accelerator)."},
    {"set_attribute", (PyCFunction)(void (*)(void))span_set_attribute, METH_FASTCALL | METH_KEYWORDS,
     "set_attribute($self, key, value)\n--\n\nSet one attribute (str, bool, int, float or a "
     "homogeneous sequence of them). Invalid keys or values are dropped and counted; beyond the "
     "attribute limit new keys are dropped and counted (C accelerator)."},
    {NULL, NULL, 0, NULL},
};

/* start_span_core(name, kind, attributes, sink, root_bound, inline_parent, record_unsampled): the
 * common case of Tracer.start_span (no explicit context, links or start time; the current span
 * is none or a local Span; a ratio root sampler / parent-following children; plain attribute
 * values). Returns NotImplemented for anything else: the Python method then does it all. */
static PyObject *getrandbits_fn = NULL;  /* random.getrandbits */
static PyObject *nonrecording_cls = NULL;
static PyObject *int_64 = NULL, *int_128 = NULL, *empty_tuple = NULL;

/* Span and trace ids come from xoshiro256** (Blackman and Vigna), seeded from
 * random.getrandbits (itself seeded from the OS) on first use and again in a forked child:
 * about ten times cheaper per id than calling getrandbits, with the same statistical quality
 * as CPython's Mersenne Twister (ids need uniqueness, not secrecy). Run with the GIL held. */
static uint64_t rng_state[4];
static int rng_seeded = 0;

static inline uint64_t
rng_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

#ifndef _WIN32
static void
rng_forget(void)
{
    rng_seeded = 0; /* a forked child must not repeat its parent's ids */
}
#endif

static int
rng_seed(void)
{
    uint64_t seed[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++) {
        PyObject *v = PyObject_CallOneArg(getrandbits_fn, int_64);
        if (v == NULL)
            return -1;
        seed[i] = PyLong_AsUnsignedLongLongMask(v);
        Py_DECREF(v);
        if (seed[i] == (uint64_t)-1 && PyErr_Occurred())
            return -1;
    }
    if ((seed[0] | seed[1] | seed[2] | seed[3]) == 0)
        seed[0] = 0x9E3779B97F4A7C15ULL; /* the one state xoshiro cannot leave */
    memcpy(rng_state, seed, sizeof(seed));
    rng_seeded = 1;
    return 0;
}

static uint64_t
rng_next(void)
{
    uint64_t *s = rng_state;
    uint64_t result = rng_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rng_rotl(s[3], 45);
    return result;
}

/* A new random non-zero id of `bits` (64 or 128) bits. */
static PyObject *
random_id(PyObject *bits)
{
    if (!rng_seeded && rng_seed() < 0)
        return NULL;
    uint64_t lo, hi = 0;
    do {
        lo = rng_next();
        if (bits == int_128)
            hi = rng_next();
    } while ((lo | hi) == 0);
    if (bits != int_128)
        return PyLong_FromUnsignedLongLong(lo);
    unsigned char buf[16];
    for (int i = 0; i < 8; i++) {
        buf[i] = (unsigned char)(lo >> (8 * i));
        buf[8 + i] = (unsigned char)(hi >> (8 * i));
    }
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromUnsignedNativeBytes(buf, 16, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
    return _PyLong_FromByteArray(buf, 16, 1, 0);
#endif
}

static int
plain_attributes(PyObject *attrs, Py_ssize_t limit)
{
    if (!PyDict_Check(attrs) || PyDict_GET_SIZE(attrs) > limit)
        return 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(attrs, &pos, &k, &v)) {
        PyTypeObject *t = Py_TYPE(v);
        if (!PyUnicode_CheckExact(k) || PyUnicode_GET_LENGTH(k) == 0 ||
            !(t == &PyUnicode_Type || t == &PyLong_Type || t == &PyBool_Type))
            return 0;
    }
    return 1;
}

static PyTypeObject *context_type = NULL; /* TraceContext (install_tracer) */
static Py_ssize_t context_remote_offset;  /* its is_remote slot (read per server span) */
static PyObject *s_trace_id, *s_span_id, *s_trace_flags, *s_trace_state, *s_baggage;

/* A remote parent's fields (a TraceContext from extract()): new references in out[0..4]
 * (trace_id, span_id, trace_flags, trace_state, baggage). 0 when they are not the plain ints
 * and tuples the class guarantees (then nothing is held), -1 on error. */
static int
context_fields(PyObject *ctx, PyObject **out)
{
    PyObject *names[5] = {s_trace_id, s_span_id, s_trace_flags, s_trace_state, s_baggage};
    int i;
    for (i = 0; i < 5; i++) {
        out[i] = PyObject_GetAttr(ctx, names[i]);
        if (out[i] == NULL)
            break;
    }
    int ok = i == 5 && PyLong_CheckExact(out[0]) && PyLong_CheckExact(out[1]) &&
             PyLong_CheckExact(out[2]) && PyTuple_CheckExact(out[3]) && PyTuple_CheckExact(out[4]);
    if (ok) {
        int nonzero = PyObject_IsTrue(out[0]);
        if (nonzero > 0)
            return 1;
        ok = nonzero; /* an id-less context (0): the Python method; an error: -1 */
    }
    int failed = i < 5 || ok < 0;
    for (int j = 0; j < i; j++)
        Py_CLEAR(out[j]);
    if (failed && i < 5 && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return failed ? -1 : 0;
}

static PyObject *
start_span_core(PyObject *name, PyObject *kind, PyObject *attributes, PyObject *sink,
                PyObject *root_bound, PyObject *inline_obj, PyObject *unsampled_obj,
                PyObject *context, PyObject *start_time)
{
    if (getrandbits_fn == NULL || span_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "start_span() before install_methods()");
        return NULL;
    }
    int inline_parent = PyObject_IsTrue(inline_obj), record_unsampled = PyObject_IsTrue(unsampled_obj);
    if (inline_parent < 0 || record_unsampled < 0)
        return NULL;
    if (sink == Py_None)
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *parent = NULL;
    if (context != NULL)
        parent = Py_NewRef(context);
    else if (PyContextVar_Get(current_var, Py_None, &parent) < 0)
        return NULL;
    /* parent is a new reference (or Py_None, also new) */
    PyObject *trace_id = NULL, *parent_id = NULL, *trace_state, *baggage, *flags = NULL;
    PyObject *remote[5] = {NULL, NULL, NULL, NULL, NULL}; /* a TraceContext's fields, held */
    PyObject *root_id = NULL; /* borrowed: the local root's span id; NULL for the span's own */
    int sampled, local_root;
    if (parent == Py_None) {
        if (root_bound == Py_None) {
            Py_DECREF(parent);
            Py_RETURN_NOTIMPLEMENTED;
        }
        trace_id = random_id(int_128);
        if (trace_id == NULL) {
            Py_DECREF(parent);
            return NULL;
        }
        /* trace_id & (2**64 - 1) < bound, with bound anywhere in [0, 2**64] */
        unsigned long long low = PyLong_AsUnsignedLongLongMask(trace_id);
        if (!PyLong_Check(root_bound) || _PyLong_Sign(root_bound) < 0) {
            Py_DECREF(trace_id);
            Py_DECREF(parent);
            Py_RETURN_NOTIMPLEMENTED;
        }
        if (_PyLong_NumBits(root_bound) > 64)
            sampled = 1; /* bound >= 2**64: everything (no OverflowError raised and cleared) */
        else {
            unsigned long long bound = PyLong_AsUnsignedLongLong(root_bound);
            if (bound == (unsigned long long)-1 && PyErr_Occurred())
                goto error;
            sampled = low < bound;
        }
        parent_id = PyLong_FromLong(0);
        trace_state = empty_tuple;
        baggage = empty_tuple;
        local_root = 1;
        flags = PyLong_FromLong(sampled ? 0x03 : 0x02);
    }
    else if (Py_TYPE(parent) == span_type && inline_parent && SLOT(parent, F_FLAGS) != NULL &&
             SLOT(parent, F_TRACE_ID) != NULL && SLOT(parent, F_SPAN_ID) != NULL &&
             SLOT(parent, F_STATE) != NULL && SLOT(parent, F_BAGGAGE) != NULL &&
             SLOT(parent, F_LOCAL_ROOT_ID) != NULL) {
        long pflags = PyLong_AsLong(SLOT(parent, F_FLAGS));
        if (pflags == -1 && PyErr_Occurred())
            goto error;
        sampled = (pflags & 0x01) != 0;
        trace_id = Py_NewRef(SLOT(parent, F_TRACE_ID));
        parent_id = Py_NewRef(SLOT(parent, F_SPAN_ID));
        trace_state = SLOT(parent, F_STATE);
        baggage = SLOT(parent, F_BAGGAGE);
        local_root = 0;
        root_id = SLOT(parent, F_LOCAL_ROOT_ID);
        flags = PyLong_FromLong(sampled ? (pflags | 0x01) : (pflags & ~0x01L));
    }
    else if (Py_TYPE(parent) == context_type && inline_parent) {
        /* a remote parent (extract()): a new local root that follows the caller's decision; a
         * local one (a span's context) is for the Python method, which finds its local root */
        PyObject *is_remote = *(PyObject **)((char *)parent + context_remote_offset);
        int remote_parent = is_remote == Py_True ? 1 : is_remote == NULL ? 0 : PyObject_IsTrue(is_remote);
        if (remote_parent <= 0) {
            Py_DECREF(parent);
            if (remote_parent < 0)
                return NULL;
            Py_RETURN_NOTIMPLEMENTED;
        }
        int got = context_fields(parent, remote);
        if (got <= 0) {
            Py_DECREF(parent);
            if (got < 0)
                return NULL;
            Py_RETURN_NOTIMPLEMENTED;
        }
        long pflags = PyLong_AsLong(remote[2]);
        if (pflags == -1 && PyErr_Occurred())
            goto error;
        sampled = (pflags & 0x01) != 0;
        trace_id = Py_NewRef(remote[0]);
        parent_id = Py_NewRef(remote[1]);
        trace_state = remote[3];
        baggage = remote[4];
        local_root = 1;
        flags = PyLong_FromLong(sampled ? (pflags | 0x01) : (pflags & ~0x01L));
    }
    else {
        Py_DECREF(parent);
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (flags == NULL || parent_id == NULL)
        goto error;
    PyObject *span_id = random_id(int_64);
    if (span_id == NULL)
        goto error;
    PyObject *result = NULL;
    if (!sampled && !record_unsampled) {
        PyObject *call[5] = {trace_id, span_id, flags, trace_state, baggage};
        result = PyObject_Vectorcall(nonrecording_cls, call, 5, NULL);
    }
    else {
        PyObject *attrs = NULL;
        if (attributes == Py_None || (PyDict_Check(attributes) && PyDict_GET_SIZE(attributes) == 0)) {
            attrs = PyDict_New();
        }
        else {
            Py_ssize_t limit = max_attributes_limit();
            if (limit == -1 && PyErr_Occurred()) {
                Py_DECREF(span_id);
                goto error;
            }
            if (plain_attributes(attributes, limit))
                attrs = PyDict_Copy(attributes);
            else {
                /* odd attributes: the Python method validates them (new ids, same result) */
                Py_DECREF(span_id);
                Py_DECREF(trace_id);
                Py_DECREF(parent_id);
                Py_DECREF(flags);
                Py_DECREF(parent);
                for (int i = 0; i < 5; i++)
                    Py_XDECREF(remote[i]);
                Py_RETURN_NOTIMPLEMENTED;
            }
        }
        PyObject *start = NULL;
        if (attrs != NULL)
            start = start_time != NULL && PyLong_CheckExact(start_time) ? Py_NewRef(start_time) : now_ns();
        if (start != NULL) {
            PyObject *fields[13] = {
                name, kind, trace_id, span_id, parent_id, flags, trace_state, baggage, attrs,
                start, local_root ? Py_True : Py_False, sink, root_id ? root_id : span_id,
            };
            result = make_span(fields);
            Py_DECREF(start);
        }
        Py_XDECREF(attrs);
    }
    Py_DECREF(span_id);
    Py_DECREF(trace_id);
    Py_DECREF(parent_id);
    Py_DECREF(flags);
    Py_DECREF(parent);
    for (int i = 0; i < 5; i++)
        Py_XDECREF(remote[i]);
    return result;
error:
    Py_XDECREF(trace_id);
    Py_XDECREF(parent_id);
    Py_XDECREF(flags);
    Py_DECREF(parent);
    for (int i = 0; i < 5; i++)
        Py_XDECREF(remote[i]);
    return NULL;
}

/* Tracer.start_span(name, attributes=None, kind=INTERNAL, context=None, links=None,
 * start_time_ns=None) as a C method: the common case goes to start_span_core with the state
 * Tracer.install() keeps in `_fast_state`; everything else (and NotImplemented) is the same
 * call on the Python method, kept as `_py_start_span`. */
static PyObject *default_kind = NULL;
static PyObject *s_fast_state, *s_py_start_span, *s_attributes, *s_kind, *s_context, *s_links,
    *s_start_time_ns;

static PyObject *
tracer_start_span(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    int simple = nargs >= 1 && nargs <= 6;
    PyObject *name = nargs >= 1 ? args[0] : NULL;
    PyObject *attributes = nargs >= 2 ? args[1] : Py_None;
    PyObject *kind = nargs >= 3 ? args[2] : default_kind;
    PyObject *context = nargs >= 4 ? args[3] : Py_None;
    PyObject *links = nargs >= 5 ? args[4] : Py_None;
    PyObject *start_time = nargs >= 6 ? args[5] : Py_None;
    for (Py_ssize_t i = 0; simple && i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
        if (key == s_attributes && nargs < 2)
            attributes = value;
        else if (key == s_kind && nargs < 3)
            kind = value;
        else if (key == s_context && nargs < 4)
            context = value;
        else if (key == s_links && nargs < 5)
            links = value;
        else if (key == s_start_time_ns && nargs < 6)
            start_time = value;
        else
            simple = 0; /* anything else, even a keyword spelled by a non-interned string */
    }
    /* links, a start time it replaces (and counts), and a name or kind of another type, are
     * for the Python method (it checks them) */
    if (links != Py_None || name == NULL || !PyUnicode_CheckExact(name) ||
        (kind != default_kind && Py_TYPE(kind) != Py_TYPE(default_kind)) ||
        (start_time != Py_None && !valid_time(start_time)))
        simple = 0;
    if (simple) {
        PyObject *state = PyObject_GetAttr(self, s_fast_state);
        if (state == NULL) {
            /* a tracer install() never ran on (a subclass): the Python method decides */
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return NULL;
            PyErr_Clear();
            state = Py_NewRef(Py_None);
        }
        PyObject *result = NULL;
        if (PyTuple_CheckExact(state) && PyTuple_GET_SIZE(state) == 4)
            result = start_span_core(name, kind, attributes, PyTuple_GET_ITEM(state, 0),
                                     PyTuple_GET_ITEM(state, 1), PyTuple_GET_ITEM(state, 2),
                                     PyTuple_GET_ITEM(state, 3), context == Py_None ? NULL : context,
                                     start_time == Py_None ? NULL : start_time);
        else
            result = Py_NewRef(Py_NotImplemented);
        Py_DECREF(state);
        if (result != Py_NotImplemented)
            return result;
        Py_DECREF(result);
    }
    if (nargs + nkw > 8) {
        PyErr_SetString(PyExc_TypeError, "start_span() takes at most 6 arguments");
        return NULL;
    }
    PyObject *call[9] = {self};
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        call[i + 1] = args[i];
    return PyObject_VectorcallMethod(s_py_start_span, call, (nargs + 1), kwnames);
}

static PyMethodDef tracer_method = {
    "start_span", (PyCFunction)(void (*)(void))tracer_start_span, METH_FASTCALL | METH_KEYWORDS,
    /* (kind=None: inspect cannot evaluate SpanKind.INTERNAL here; None means INTERNAL) */
    "start_span($self, /, name, attributes=None, kind=None, context=None, "
    "links=None, start_time_ns=None)\n--\n\nStart a span (C accelerator; see "
    "Tracer._py_start_span).\n\n``kind`` None is SpanKind.INTERNAL."};

/* install_tracer(Tracer, SpanKind.INTERNAL, TraceContext): make Tracer.start_span the C method
 * above (remote parents are TraceContext objects). */
static PyObject *
install_tracer(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyType_Check(args[0]) || !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "install_tracer(Tracer, SpanKind.INTERNAL, TraceContext)");
        return NULL;
    }
    static const char *const remote_name[1] = {"is_remote"};
    if (object_slot_offsets(args[2], remote_name, 1, &context_remote_offset) < 0)
        return NULL;
    Py_INCREF(args[1]);
    Py_XSETREF(default_kind, args[1]);
    Py_INCREF(args[2]);
    Py_XSETREF(context_type, (PyTypeObject *)args[2]);
    PyObject *descr = PyDescr_NewMethod((PyTypeObject *)args[0], &tracer_method);
    if (descr == NULL)
        return NULL;
    int rc = PyObject_SetAttrString(args[0], "start_span", descr);
    Py_DECREF(descr);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* take_chunk(popleft, n, tail_on) -> (taken, observed, sampled, unsampled, ready): pop up to n
 * items from the pipeline queue and sort them as Pipeline._drain does (spans: all observed;
 * sampled ones to export; record-only ones for the tail keeper when tail_on; other items are
 * ready-made records). Stops early when the queue is empty. */
static PyObject *
take_chunk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || span_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "take_chunk(popleft, n, tail_on) after setup()");
        return NULL;
    }
    PyObject *popleft = args[0];
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    int tail_on = PyObject_IsTrue(args[2]);
    if ((n == -1 && PyErr_Occurred()) || tail_on < 0)
        return NULL;
    PyObject *observed = PyList_New(0), *sampled = PyList_New(0), *unsampled = PyList_New(0),
             *ready = PyList_New(0);
    Py_ssize_t taken = 0;
    if (!observed || !sampled || !unsampled || !ready)
        goto error;
    for (; taken < n; taken++) {
        PyObject *item = PyObject_CallNoArgs(popleft);
        if (item == NULL) {
            if (PyErr_ExceptionMatches(PyExc_IndexError)) {
                PyErr_Clear();
                break;
            }
            goto error;
        }
        int rc;
        if (Py_TYPE(item) == span_type && SLOT(item, F_FLAGS) != NULL) {
            rc = PyList_Append(observed, item);
            if (rc == 0) {
                long flags = PyLong_AsLong(SLOT(item, F_FLAGS));
                if (flags == -1 && PyErr_Occurred())
                    rc = -1;
                else if (flags & 0x01)
                    rc = PyList_Append(sampled, item);
                else if (tail_on)
                    rc = PyList_Append(unsampled, item);
            }
        }
        else
            rc = PyList_Append(ready, item);
        Py_DECREF(item);
        if (rc < 0)
            goto error;
    }
    return Py_BuildValue("(nNNNN)", taken, observed, sampled, unsampled, ready);
error:
    /* items already taken are in the lists: they are lost with them (reported by the caller) */
    Py_XDECREF(observed);
    Py_XDECREF(sampled);
    Py_XDECREF(unsampled);
    Py_XDECREF(ready);
    return NULL;
}

/* install_methods(current_var, Limits, getrandbits, NonRecordingSpan): put the C __enter__,
 * __exit__ and set_attribute on the Span class given to setup(), and arm start_span(). */
static PyObject *
install_methods(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || span_type == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "install_methods(current_var, Limits, getrandbits, NonRecordingSpan) after setup()");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_XSETREF(current_var, args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(limits_cls, args[1]);
    limits_tag = 0;
    Py_INCREF(args[2]);
    Py_XSETREF(getrandbits_fn, args[2]);
    Py_INCREF(args[3]);
    Py_XSETREF(nonrecording_cls, args[3]);
    if (int_zero == NULL && (int_zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    if (probe_token_layout() < 0)
        return NULL;
    for (PyMethodDef *def = span_methods; def->ml_name != NULL; def++) {
        PyObject *descr = PyDescr_NewMethod(span_type, def);
        if (descr == NULL)
            return NULL;
        int rc = PyObject_SetAttrString((PyObject *)span_type, def->ml_name, descr);
        Py_DECREF(descr);
        if (rc < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* "00".."ff" for each byte value, filled on first use. */
static char hex_pairs[256][2];
static int hex_pairs_ready = 0;

/* 16 hex digits of v at p. */
static inline void
put_hex64(char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        memcpy(p + 2 * i, hex_pairs[v & 0xFF], 2);
}

/* A non-negative int of at most 128 bits (checked by the caller) as two 64-bit halves, read
 * from its digits (Include/cpython/longintrepr.h); 0 where that layout is not known. */
static int
u128_of(PyObject *value, uint64_t *lo, uint64_t *hi)
{
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030F0000
    uintptr_t tag = ((PyLongObject *)value)->long_value.lv_tag;
    if ((tag & 3) == 2)
        return 0; /* negative */
    Py_ssize_t n = (Py_ssize_t)(tag >> 3);
    const digit *d = ((PyLongObject *)value)->long_value.ob_digit;
#elif PY_VERSION_HEX < 0x030C0000
    Py_ssize_t n = Py_SIZE(value);
    if (n < 0)
        return 0;
    const digit *d = ((PyLongObject *)value)->ob_digit;
#else
    return 0;
#endif
#if PY_VERSION_HEX < 0x030F0000
    if (n > (128 + PyLong_SHIFT - 1) / PyLong_SHIFT)
        return 0;
    uint64_t l = 0, h = 0;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        h = (h << PyLong_SHIFT) | (l >> (64 - PyLong_SHIFT));
        l = (l << PyLong_SHIFT) | (uint64_t)d[i];
    }
    *lo = l;
    *hi = h;
    return 1;
#endif
}

/* Lowercase hex of a non-negative int below 2**(8*nbytes), as int.to_bytes(nbytes).hex()
 * gives; NULL with no error set for any other value (the Python builder then decides). */
static PyObject *
hex_id(PyObject *value, int nbytes)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char buf[16];
    if (!hex_pairs_ready) {
        for (int b = 0; b < 256; b++) {
            hex_pairs[b][0] = digits[b >> 4];
            hex_pairs[b][1] = digits[b & 0xF];
        }
        hex_pairs_ready = 1;
    }
    if (nbytes == 8) {
        /* (PyLong_AsUnsignedLongLong goes through the generic byte conversion up to 3.12;
         * the mask reads the digits directly, once the range is checked) */
        if (_PyLong_Sign(value) < 0 || _PyLong_NumBits(value) > 64)
            return NULL; /* the Python builder decides */
        unsigned long long v = PyLong_AsUnsignedLongLongMask(value);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        PyObject *out = PyUnicode_New(16, 127);
        if (out == NULL)
            return NULL;
        put_hex64((char *)PyUnicode_1BYTE_DATA(out), v);
        return out;
    }
    if (_PyLong_Sign(value) < 0 || _PyLong_NumBits(value) > (size_t)nbytes * 8)
        return NULL;
    uint64_t lo, hi;
    if (nbytes == 16 && u128_of(value, &lo, &hi)) {
        PyObject *out = PyUnicode_New(32, 127);
        if (out == NULL)
            return NULL;
        char *p = (char *)PyUnicode_1BYTE_DATA(out);
        put_hex64(p, hi);
        put_hex64(p + 16, lo);
        return out;
    }
#if PY_VERSION_HEX >= 0x030D0000
    if (PyLong_AsNativeBytes(value, buf, nbytes,
                             Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER) < 0)
        return NULL;
#else
    if (_PyLong_AsByteArray((PyLongObject *)value, buf, (size_t)nbytes, 0, 0) < 0)
        return NULL;
#endif
    PyObject *out = PyUnicode_New(nbytes * 2, 127);
    if (out == NULL)
        return NULL;
    char *p = (char *)PyUnicode_1BYTE_DATA(out);
    for (int i = 0; i < nbytes; i++)
        memcpy(p + 2 * i, hex_pairs[buf[i]], 2);
    return out;
}

/* hex_id() through a one-entry cache per kind of id, for the record builders: the spans of
 * a trace share one trace-id int, and a parent's span-id int is the parent_span_id of each of
 * its children, so consecutive records mostly repeat an id, and then share its text (a str is
 * immutable). The cache holds its int and str, so identity is a safe key. */
typedef struct {
    PyObject *id;
    PyObject *hex;
} hex_cache;
static hex_cache trace_hex = {NULL, NULL}, span_hex = {NULL, NULL};

static PyObject *
cached_hex(hex_cache *cache, PyObject *value, int nbytes)
{
    if (cache->id == value)
        return Py_NewRef(cache->hex);
    PyObject *hex = hex_id(value, nbytes);
    if (hex != NULL) {
        PyObject *old_id = cache->id, *old_hex = cache->hex;
        cache->id = Py_NewRef(value);
        cache->hex = Py_NewRef(hex);
        Py_XDECREF(old_id);
        Py_XDECREF(old_hex);
    }
    return hex;
}

/* Sanitized attributes for the fast path, or NULL with no error set when a value needs the
 * Python builder (NULL with an error set on a real failure). When sanitizing changes nothing
 * (the usual case) the span's own dict is returned: an ended span is frozen and records are
 * never mutated, so the record can share it (as the unsanitized record builder does). */
#define ATTR_STACK 32
/* The sanitizer's decision for each attribute key (key_cache[key] = (new_key, action, _)),
 * remembered by the key's identity for one build_*_records call: the attribute keys of a
 * chunk's spans are mostly the same few str objects (constants in the instrumented code).
 * Holds its keys and new keys; forgotten whenever Python runs (it may change the caches). */
#define KEY_MEMO 16
typedef struct {
    PyObject *key[KEY_MEMO];
    PyObject *new_key[KEY_MEMO];
    long action[KEY_MEMO];
    int n;
} key_memo;

static void
key_memo_clear(key_memo *memo)
{
    if (memo == NULL)
        return;
    for (int i = 0; i < memo->n; i++) {
        Py_DECREF(memo->key[i]);
        Py_DECREF(memo->new_key[i]);
    }
    memo->n = 0;
}

/* Whether a float attribute value is a card number written as a number, as
 * sanitize._Engine.card_number decides (then the Python builder renders it): integral, 13-19
 * digits either sign, an issuer prefix (sanitize._card_prefix), and Luhn-valid while the float
 * holds the digits exactly (below 2**53). Exact, not merely "large": big integral floats that
 * are no card (a duration in ms) stay on the fast path. */
static int
float_may_be_card(double d)
{
    if (d < 0)
        d = -d;
    if (!(d >= (double)CARD_MIN && d < 1e19) || d != floor(d)) /* (NaN and inf fail too) */
        return 0;
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%llu", (unsigned long long)d);
    if (n < 13 || n > 19)
        return 0;
    if (digits[0] == '3') {
        if (strchr("0456789", digits[1]) == NULL)
            return 0;
    }
    else if (digits[0] == '2') {
        int first4 = (digits[1] - '0') * 100 + (digits[2] - '0') * 10 + (digits[3] - '0') + 2000;
        if (first4 < 2221 || first4 > 2720)
            return 0;
    }
    else if (digits[0] < '4' || digits[0] > '6')
        return 0;
    if (d >= 9007199254740992.0) /* 2**53: the last digits are rounding, no Luhn check */
        return 1;
    int total = 0, dbl = 0;
    for (int i = n - 1; i >= 0; i--) {
        int v = digits[i] - '0';
        if (dbl)
            v = v > 4 ? v * 2 - 9 : v * 2;
        total += v;
        dbl = !dbl;
    }
    return total % 10 == 0;
}

static PyObject *
fast_attributes(PyObject *attrs, PyObject *key_cache, PyObject *text_cache, PyObject *sql_cache,
                key_memo *memo)
{
    Py_ssize_t size = PyDict_GET_SIZE(attrs);
    PyObject *stack[2 * ATTR_STACK];
    PyObject **pairs = size <= ATTR_STACK ? stack : PyMem_Malloc(sizeof(PyObject *) * 2 * size);
    if (pairs == NULL)
        return PyErr_NoMemory();
    PyObject *out = NULL;
    int changed = 0;
    Py_ssize_t pos = 0, k = 0;
    PyObject *key, *value;
    while (PyDict_Next(attrs, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || k >= size)
            goto slow;
        PyObject *new_key = NULL;
        long action = 0;
        int m = 0;
        if (memo != NULL) {
            for (; m < memo->n; m++) {
                if (memo->key[m] == key) {
                    new_key = memo->new_key[m];
                    action = memo->action[m];
                    break;
                }
            }
        }
        if (new_key == NULL) {
            PyObject *entry = PyDict_GetItemWithError(key_cache, key);
            if (entry == NULL) {
                if (PyErr_Occurred())
                    goto done;
                goto slow;
            }
            if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3)
                goto slow;
            new_key = PyTuple_GET_ITEM(entry, 0);
            PyObject *action_obj = PyTuple_GET_ITEM(entry, 1);
            if (!PyLong_CheckExact(action_obj))
                goto slow;
            action = PyLong_AsLong(action_obj);
            if (action == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                goto slow;
            }
            if (memo != NULL && memo->n < KEY_MEMO) {
                memo->key[memo->n] = Py_NewRef(key);
                memo->new_key[memo->n] = Py_NewRef(new_key);
                memo->action[memo->n] = action;
                memo->n++;
            }
        }
        PyObject *result = NULL; /* borrowed */
        PyTypeObject *type = Py_TYPE(value);
        if (action == 0) { /* _PASS */
            if (type == &PyUnicode_Type) {
                result = PyDict_GetItemWithError(text_cache, value);
                if (result == NULL) {
                    if (PyErr_Occurred())
                        goto done;
                    goto slow;
                }
            }
            else if (type == &PyLong_Type) {
                int overflow = 0;
                long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
                if (v == -1 && !overflow && PyErr_Occurred())
                    goto done;
                if (overflow || v >= CARD_MIN || v <= -CARD_MIN)
                    goto slow; /* may be a card number (also negative): the Python builder checks */
                result = value;
            }
            else if (type == &PyFloat_Type) {
                if (float_may_be_card(PyFloat_AS_DOUBLE(value)))
                    goto slow; /* 4111111111111111.0: the Python builder masks it */
                result = value;
            }
            else if (type == &PyBool_Type || value == Py_None) {
                result = value;
            }
            else
                goto slow;
        }
        else if (action == 3 && type == &PyUnicode_Type) { /* _SQL */
            result = PyDict_GetItemWithError(sql_cache, value);
            if (result == NULL) {
                if (PyErr_Occurred())
                    goto done;
                goto slow;
            }
        }
        else
            goto slow;
        if (!changed && (new_key != key || result != value)) {
            /* equal text in another object is no change */
            if ((new_key != key && PyUnicode_Compare(new_key, key) != 0) ||
                (result != value &&
                 (Py_TYPE(result) != &PyUnicode_Type || type != &PyUnicode_Type ||
                  PyUnicode_Compare(result, value) != 0)))
                changed = 1;
            if (PyErr_Occurred())
                goto done;
        }
        pairs[2 * k] = new_key;
        pairs[2 * k + 1] = result;
        k++;
    }
    if (!changed) {
        out = Py_NewRef(attrs);
        goto done;
    }
    out = PyDict_New();
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (PyDict_SetItem(out, pairs[2 * i], pairs[2 * i + 1]) < 0) {
            Py_CLEAR(out);
            goto done;
        }
    }
    goto done;
slow:
    out = NULL;
done:
    if (pairs != stack)
        PyMem_Free(pairs);
    return out;
}

/* Identity caches for the enum members (a handful of singletons). */
#define SMALL_CACHE 8
typedef struct {
    PyObject *key[SMALL_CACHE];
    PyObject *value[SMALL_CACHE];
    int n;
} small_cache;

static PyObject *
small_lookup(small_cache *cache, PyObject *table, PyObject *key)
{
    for (int i = 0; i < cache->n; i++)
        if (cache->key[i] == key)
            return cache->value[i];
    PyObject *value = PyDict_GetItemWithError(table, key);
    if (value != NULL && cache->n < SMALL_CACHE) {
        /* The caches live for one call, during which the table and the spans hold the refs. */
        cache->key[cache->n] = key;
        cache->value[cache->n] = value;
        cache->n++;
    }
    return value;
}

/* Records are copies of a template dict whose keys are all there already: filling one with
 * PyDict_SetItem looks each key up again (~190 instructions a key, 13 keys a record). Where
 * CPython's dict layout is known (3.11-3.13, the same there), the value slots of a fresh copy
 * are written directly instead: only a copy whose key table is its own (not shared), holds
 * str keys only, and has at each remembered position exactly the wanted key object (checked
 * per record, by identity), so the dict is the one PyDict_SetItem would have made; anything
 * else (another layout, a key that is not there) goes through PyDict_SetItem as before. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define DIRECT_FILL 1
typedef struct {
    Py_ssize_t dk_refcnt;
    uint8_t dk_log2_size;
    uint8_t dk_log2_index_bytes;
    uint8_t dk_kind; /* 1: DICT_KEYS_UNICODE */
    uint32_t dk_version;
    Py_ssize_t dk_usable;
    Py_ssize_t dk_nentries;
    char dk_indices[];
} keys_layout; /* Include/internal/pycore_dict.h, struct _dictkeysobject */
typedef struct {
    PyObject *me_key;
    PyObject *me_value;
} unicode_entry;

static unicode_entry *
unicode_entries(PyObject *dict, Py_ssize_t *n)
{
    PyDictObject *mp = (PyDictObject *)dict;
    keys_layout *dk = (keys_layout *)mp->ma_keys;
    if (mp->ma_values != NULL || dk == NULL || dk->dk_kind != 1 || dk->dk_refcnt != 1)
        return NULL;
    *n = dk->dk_nentries;
    return (unicode_entry *)(dk->dk_indices + ((size_t)1 << dk->dk_log2_index_bytes));
}
#endif

#define FILL_MAX 16
/* Where each wanted key sits in the copies of one template (found once per template). */
typedef struct {
    PyObject *template; /* held */
    Py_ssize_t nentries;
    Py_ssize_t index[FILL_MAX]; /* -1: not found */
} fill_map;
static fill_map span_fill = {NULL, 0, {0}}, audit_fill = {NULL, 0, {0}};

/* slots[i]: the value slot of want[i] in `rec`, a fresh PyDict_Copy of `template`, or NULL
 * when that key must go through PyDict_SetItem. */
static void
fill_slots(fill_map *map, PyObject *template, PyObject *rec, PyObject *const *want, int n, PyObject ***slots)
{
#ifdef DIRECT_FILL
    Py_ssize_t count;
    unicode_entry *entries = unicode_entries(rec, &count);
    if (entries == NULL)
        goto none;
    if (map->template != template) {
        Py_XSETREF(map->template, Py_NewRef(template));
        map->nentries = count;
        for (int i = 0; i < n; i++) {
            map->index[i] = -1;
            for (Py_ssize_t j = 0; j < count; j++) {
                if (entries[j].me_key == want[i] && entries[j].me_value != NULL) {
                    map->index[i] = j;
                    break;
                }
            }
        }
    }
    if (count != map->nentries)
        goto none;
    for (int i = 0; i < n; i++) {
        Py_ssize_t j = map->index[i];
        /* (a live entry: a deleted one has no key) */
        slots[i] = j >= 0 && entries[j].me_key == want[i] ? &entries[j].me_value : NULL;
    }
    return;
none:
#else
    (void)map;
    (void)template;
    (void)rec;
    (void)want;
#endif
    for (int i = 0; i < n; i++)
        slots[i] = NULL;
}

/* rec[key] = value (a new reference, stolen; NULL: an error is set) through its slot when
 * there is one. */
static int
fill_new(PyObject *rec, PyObject **slot, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return -1;
    if (slot != NULL) {
        PyObject *old = *slot;
        *slot = value;
        Py_DECREF(old);
        return 0;
    }
    int rc = PyDict_SetItem(rec, key, value);
    Py_DECREF(value);
    return rc;
}

static inline int
fill(PyObject *rec, PyObject **slot, PyObject *key, PyObject *value)
{
    return fill_new(rec, slot, key, Py_NewRef(value));
}

/* The events / links value of a record without any: the shared read-only empty list
 * (records.NO_ITEMS), as the Python builders use. */
static PyObject *
empty_list(void)
{
    return Py_NewRef(no_items);
}

/* The record of one span, or NULL with no error when the span needs the Python builder. */
static PyObject *
fast_record(PyObject *span, PyObject *template, PyObject *table, PyObject *kind_str,
            PyObject *status_str, PyObject *key_cache, PyObject *text_cache, PyObject *sql_cache,
            Py_ssize_t max_attributes, small_cache *kinds, small_cache *statuses,
            small_cache *thresholds, key_memo *memo)
{
    if (Py_TYPE(span) != span_type)
        return NULL;
    for (int i = 0; i < F_COUNT; i++)
        if (SLOT(span, i) == NULL)
            return NULL;
    /* what the limits dropped (rare): [attributes, events, links] of ints, else Python's */
    PyObject *dropped = SLOT(span, F_DROPPED);
    if (dropped != Py_None && (!PyList_CheckExact(dropped) || PyList_GET_SIZE(dropped) != 3))
        return NULL;
    if (SLOT(span, F_EVENTS) != Py_None || SLOT(span, F_LINKS) != Py_None ||
        SLOT(span, F_MESSAGE) != Py_None)
        return NULL;
    /* a tracestate (rare) goes to the Python builder, which adds the record's trace_state */
    PyObject *state = SLOT(span, F_STATE);
    if (!PyTuple_CheckExact(state) || PyTuple_GET_SIZE(state) != 0)
        return NULL;
    PyObject *name = SLOT(span, F_NAME);
    if (!PyUnicode_CheckExact(name))
        return NULL;
    /* key_cache None: no sanitizer, the record takes the span's name and attribute map as they
     * are (records.span_record) */
    int sanitize = key_cache != Py_None;
    PyObject *sname = sanitize ? PyDict_GetItemWithError(text_cache, name) : name;
    if (sname == NULL)
        return NULL;
    PyObject *attrs = SLOT(span, F_ATTRS);
    if (!PyDict_CheckExact(attrs) || PyDict_GET_SIZE(attrs) > max_attributes)
        return NULL;
    PyObject *start_obj = SLOT(span, F_START), *end_obj = SLOT(span, F_END);
    if (!PyLong_CheckExact(start_obj) || !PyLong_CheckExact(end_obj))
        return NULL;
    int overflow = 0;
    long long start = PyLong_AsLongLongAndOverflow(start_obj, &overflow);
    if (overflow || (start == -1 && PyErr_Occurred()))
        return NULL;
    long long end = PyLong_AsLongLongAndOverflow(end_obj, &overflow);
    if (overflow || (end == -1 && PyErr_Occurred()))
        return NULL;
    PyObject *kind = small_lookup(kinds, kind_str, SLOT(span, F_KIND));
    if (kind == NULL)
        return NULL;
    PyObject *status = small_lookup(statuses, status_str, SLOT(span, F_STATUS));
    if (status == NULL)
        return NULL;
    PyObject *triple = small_lookup(thresholds, table, kind);
    if (triple == NULL || !PyTuple_CheckExact(triple) || PyTuple_GET_SIZE(triple) != 3)
        return NULL;
    PyObject *parent = SLOT(span, F_PARENT);
    if (!PyLong_CheckExact(parent) || !PyLong_CheckExact(SLOT(span, F_TRACE_ID)) ||
        !PyLong_CheckExact(SLOT(span, F_SPAN_ID)))
        return NULL;
    PyObject *new_attrs = NULL;
    if (!sanitize)
        new_attrs = Py_NewRef(attrs);
    else if (PyDict_GET_SIZE(attrs)) {
        new_attrs = fast_attributes(attrs, key_cache, text_cache, sql_cache, memo);
        if (new_attrs == NULL)
            return NULL;
    }
    else {
        new_attrs = PyDict_New();
        if (new_attrs == NULL)
            return NULL;
    }
    int clock_back = end < start;
    if (clock_back)
        end = start;
    double duration_ms = (double)(end - start) / 1e6;
    double limits[3];
    for (int i = 0; i < 3; i++) {
        limits[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(triple, i));
        if (limits[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(new_attrs);
            return NULL;
        }
    }
    int category = duration_ms < limits[0] ? 0 : duration_ms < limits[1] ? 1 : duration_ms < limits[2] ? 2 : 3;

    PyObject *rec = PyDict_Copy(template);
    if (rec == NULL) {
        Py_DECREF(new_attrs);
        return NULL;
    }
    /* the 13 keys below are in the template: their slots in the copy, where known (the
     * dropped counts after them may add keys, which can move the table) */
    PyObject **slot[K_DROPPED_ATTRIBUTES];
    fill_slots(&span_fill, template, rec, keys, K_DROPPED_ATTRIBUTES, slot);
#define FILL_NEW(k, v) fill_new(rec, slot[k], keys[k], (v))
#define FILL(k, v) fill(rec, slot[k], keys[k], (v))
    /* hex_id() returning NULL without an error sends the span to the Python builder. */
    if (FILL_NEW(K_TRACE_ID, cached_hex(&trace_hex, SLOT(span, F_TRACE_ID), 16)) < 0 ||
        FILL_NEW(K_SPAN_ID, cached_hex(&span_hex, SLOT(span, F_SPAN_ID), 8)) < 0)
        goto error;
    int has_parent = PyObject_IsTrue(parent);
    if (has_parent < 0)
        goto error;
    if (has_parent && FILL_NEW(K_PARENT, cached_hex(&span_hex, parent, 8)) < 0)
        goto error;
    if (FILL(K_NAME, sname) < 0 || FILL(K_KIND, kind) < 0 ||
        /* the span's own int objects (the end is the start when the clock went back) */
        FILL(K_START, start_obj) < 0 || FILL(K_END, clock_back ? start_obj : end_obj) < 0 ||
        FILL_NEW(K_DURATION, PyFloat_FromDouble(duration_ms)) < 0 || FILL(K_STATUS, status) < 0 ||
        FILL(K_CATEGORY, cat_names[category]) < 0 || FILL(K_ATTRIBUTES, new_attrs) < 0 ||
        FILL_NEW(K_EVENTS, empty_list()) < 0 || FILL_NEW(K_LINKS, empty_list()) < 0)
        goto error;
#undef FILL_NEW
#undef FILL
    if (dropped != Py_None) {
        /* records._add_dropped: each count only when it is an int above 0 */
        for (int i = 0; i < 3; i++) {
            PyObject *count = PyList_GET_ITEM(dropped, i);
            if (PyLong_CheckExact(count) && _PyLong_Sign(count) > 0 &&
                PyDict_SetItem(rec, keys[K_DROPPED_ATTRIBUTES + i], count) < 0)
                goto error;
        }
    }
    Py_DECREF(new_attrs);
    /* A fresh record cannot be part of a reference cycle (strings, numbers, two empty lists,
     * an attribute map of scalars, the shared resource), so the cycle collector has nothing
     * to find in it: untrack it, as CPython does itself for dicts of atomic values. Records
     * waiting in an exporter queue then cost the collector nothing, which is a large share of
     * the export worker's cost otherwise. Inserting a container re-tracks a dict. */
    if (PyObject_GC_IsTracked(rec))
        PyObject_GC_UnTrack(rec);
    return rec;
error:
    Py_DECREF(new_attrs);
    Py_DECREF(rec);
    return NULL;
}

static PyObject *
build_span_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "build_span_records() takes 10 arguments");
        return NULL;
    }
    PyObject *spans = args[0], *template = args[1], *table = args[2], *kind_str = args[3],
             *status_str = args[4], *key_cache = args[5], *text_cache = args[6],
             *sql_cache = args[7], *slow = args[9];
    Py_ssize_t max_attributes = PyLong_AsSsize_t(args[8]);
    if (max_attributes == -1 && PyErr_Occurred())
        return NULL;
    if (span_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup() was not called");
        return NULL;
    }
    int plain = key_cache == Py_None && text_cache == Py_None && sql_cache == Py_None;
    if (!PyList_CheckExact(spans) || !PyDict_CheckExact(template) || !PyDict_CheckExact(table) ||
        !PyDict_CheckExact(kind_str) || !PyDict_CheckExact(status_str) ||
        (!plain && (!PyDict_CheckExact(key_cache) || !PyDict_CheckExact(text_cache) ||
                    !PyDict_CheckExact(sql_cache)))) {
        PyErr_SetString(PyExc_TypeError, "build_span_records(): unexpected argument types");
        return NULL;
    }
    small_cache kinds = {.n = 0}, statuses = {.n = 0}, thresholds = {.n = 0};
    key_memo memo = {.n = 0};
    Py_ssize_t n = PyList_GET_SIZE(spans);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        Py_INCREF(span);
        PyObject *rec = fast_record(span, template, table, kind_str, status_str, key_cache,
                                    text_cache, sql_cache, max_attributes, &kinds, &statuses,
                                    &thresholds, &memo);
        if (rec == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(span);
                Py_CLEAR(out);
                break;
            }
            /* The Python builder may fill the caches: forget borrowed lookups. */
            kinds.n = statuses.n = thresholds.n = 0;
            key_memo_clear(&memo);
            rec = PyObject_CallOneArg(slow, span);
            if (rec == NULL) {
                Py_DECREF(span);
                Py_CLEAR(out);
                break;
            }
        }
        Py_DECREF(span);
        int rc = PyList_Append(out, rec);
        Py_DECREF(rec);
        if (rc < 0) {
            Py_CLEAR(out);
            break;
        }
    }
    key_memo_clear(&memo);
    return out;
}

/* ---------------------------------------------------------------------------------------
 * rollup_chunk(spans, interval_ns, error_status, inv_log_gamma, min_indexable): what
 * processors.Rollups needs from a chunk of spans, summarised per (window, name, kind):
 * {(window, name, kind): (count, errors, sum_ms, min_ms, max_ms, zero_count, {bucket: n}, err)}
 * where err is None when the group has no error span, else the error spans' own
 * (sum_ms, min_ms, max_ms, zero_count, {bucket: n}) and the other spans' (min_ms, max_ms), inf and
 * -inf when every span is an error. The bucket of a duration is ceil(log(ms) * inv_log_gamma),
 * as DurationSketch.add computes it.
 * Raises TypeError / OverflowError for anything unusual; the caller then uses its Python code.
 */
static int
cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

typedef struct {
    long long window;
    PyObject *name; /* borrowed from a span of the chunk */
    PyObject *kind;
    long count, errors, zeros, err_zeros;
    double sum, comp, min, max;
    double err_sum, err_comp, err_min, err_max, ok_min, ok_max; /* by status, for err */
} group_t;

/* Neumaier summation: *sum + *comp is the sum of every v added. */
static inline void
add_compensated(double *sum, double *comp, double v)
{
    double t = *sum + v;
    *comp += fabs(*sum) >= fabs(v) ? (*sum - t) + v : (v - t) + *sum;
    *sum = t;
}

/* {bucket: n} of the durations ms[i] of group g (status `want`: 0 others, 1 errors, -1 all);
 * counts the ones too small to index in *zeros. idx is scratch space for n longs. */
static PyObject *
bucket_counts(int g, int want, Py_ssize_t n, const int *gidx, const char *err, const double *ms,
              double inv, double min_indexable, long *idx, long *zeros)
{
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (gidx[i] != g || (want >= 0 && err[i] != want))
            continue;
        if (ms[i] > min_indexable)
            idx[k++] = (long)ceil(log(ms[i]) * inv);
        else
            (*zeros)++;
    }
    if (k <= 64) {
        /* (a chunk's group is small: insertion sort, the same order as qsort) */
        for (Py_ssize_t i = 1; i < k; i++) {
            long v = idx[i];
            Py_ssize_t j = i;
            for (; j > 0 && idx[j - 1] > v; j--)
                idx[j] = idx[j - 1];
            idx[j] = v;
        }
    }
    else
        qsort(idx, (size_t)k, sizeof(long), cmp_long);
    PyObject *bins = PyDict_New();
    if (bins == NULL)
        return NULL;
    for (Py_ssize_t a = 0; a < k;) {
        Py_ssize_t b = a;
        while (b < k && idx[b] == idx[a])
            b++;
        PyObject *bk = PyLong_FromLong(idx[a]), *bv = PyLong_FromSsize_t(b - a);
        int rc = (bk && bv) ? PyDict_SetItem(bins, bk, bv) : -1;
        Py_XDECREF(bk);
        Py_XDECREF(bv);
        if (rc < 0) {
            Py_DECREF(bins);
            return NULL;
        }
        a = b;
    }
    return bins;
}

static PyObject *
rollup_chunk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "rollup_chunk(spans: list, interval, error, inv, min)");
        return NULL;
    }
    PyObject *spans = args[0], *error_status = args[2];
    long long interval = PyLong_AsLongLong(args[1]);
    double inv = PyFloat_AsDouble(args[3]), min_indexable = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (interval <= 0 || span_type == NULL) {
        PyErr_SetString(PyExc_ValueError, "rollup_chunk: bad interval or setup() not called");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(spans);
    /* whether an unset status counts as the error status (-1: not compared yet) */
    int unset_is_error = -1;
    if (status_unset != NULL && n > 0) {
        unset_is_error = PyObject_RichCompareBool(status_unset, error_status, Py_EQ);
        if (unset_is_error < 0)
            return NULL;
    }
    group_t *groups = PyMem_Malloc(sizeof(group_t) * (n ? n : 1));
    int *gidx = PyMem_Malloc(sizeof(int) * (n ? n : 1));
    double *ms = PyMem_Malloc(sizeof(double) * (n ? n : 1));
    long *idx = PyMem_Malloc(sizeof(long) * (n ? n : 1));
    char *err = PyMem_Malloc(n ? n : 1);
    PyObject *out = NULL;
    int ngroups = 0, last = -1;
    if (!groups || !gidx || !ms || !idx || !err) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        if (Py_TYPE(span) != span_type || SLOT(span, F_START) == NULL || SLOT(span, F_END) == NULL ||
            SLOT(span, F_NAME) == NULL || SLOT(span, F_KIND) == NULL || SLOT(span, F_STATUS) == NULL) {
            PyErr_SetString(PyExc_TypeError, "rollup_chunk: not a Span");
            goto done;
        }
        int overflow = 0;
        long long start = PyLong_AsLongLongAndOverflow(SLOT(span, F_START), &overflow);
        long long end = overflow ? 0 : PyLong_AsLongLongAndOverflow(SLOT(span, F_END), &overflow);
        if (PyErr_Occurred())
            goto done;
        if (overflow) {
            PyErr_SetString(PyExc_OverflowError, "rollup_chunk: time out of range");
            goto done;
        }
        if (end < start)
            end = start;
        long long mod = end % interval;
        if (mod < 0)
            mod += interval; /* Python's floor modulo */
        long long window = end - mod;
        PyObject *name = SLOT(span, F_NAME), *kind = SLOT(span, F_KIND);
        int g = -1;
        if (last >= 0 && groups[last].window == window && groups[last].name == name &&
            groups[last].kind == kind)
            g = last;
        /* the same name and kind objects (the usual case: at most one group of a window has
         * equal ones, so this finds the group the comparisons below would) */
        for (int j = 0; g < 0 && j < ngroups; j++) {
            if (groups[j].window == window && groups[j].name == name && groups[j].kind == kind)
                g = j;
        }
        for (int j = 0; g < 0 && j < ngroups; j++) {
            if (groups[j].window != window)
                continue;
            int same = PyObject_RichCompareBool(groups[j].name, name, Py_EQ);
            if (same < 0)
                goto done;
            if (same) {
                same = PyObject_RichCompareBool(groups[j].kind, kind, Py_EQ);
                if (same < 0)
                    goto done;
                if (same)
                    g = j;
            }
        }
        if (g < 0) {
            g = ngroups++;
            groups[g] = (group_t){window, name,      kind,     0,         0,        0,        0,
                                  0.0,    0.0,       INFINITY, -INFINITY, 0.0,      0.0,      INFINITY,
                                  -INFINITY, INFINITY, -INFINITY};
        }
        last = g;
        double v = (double)(end - start) / 1e6;
        group_t *gr = &groups[g];
        gr->count++;
        int is_error = SLOT(span, F_STATUS) == error_status;
        if (!is_error && SLOT(span, F_STATUS) == status_unset && unset_is_error >= 0)
            is_error = unset_is_error; /* (compared once per chunk) */
        else if (!is_error) {
            is_error = PyObject_RichCompareBool(SLOT(span, F_STATUS), error_status, Py_EQ);
            if (is_error < 0)
                goto done;
        }
        gr->errors += is_error;
        add_compensated(&gr->sum, &gr->comp, v);
        if (v < gr->min)
            gr->min = v;
        if (v > gr->max)
            gr->max = v;
        if (is_error) {
            add_compensated(&gr->err_sum, &gr->err_comp, v);
            if (v < gr->err_min)
                gr->err_min = v;
            if (v > gr->err_max)
                gr->err_max = v;
        } else {
            if (v < gr->ok_min)
                gr->ok_min = v;
            if (v > gr->ok_max)
                gr->ok_max = v;
        }
        gidx[i] = g;
        ms[i] = v;
        err[i] = (char)is_error;
    }
    out = PyDict_New();
    if (out == NULL)
        goto done;
    for (int g = 0; g < ngroups; g++) {
        group_t *gr = &groups[g];
        PyObject *bins = bucket_counts(g, -1, n, gidx, err, ms, inv, min_indexable, idx, &gr->zeros);
        if (bins == NULL)
            goto fail;
        PyObject *errs = Py_None;
        Py_INCREF(errs);
        if (gr->errors) {
            PyObject *ebins = bucket_counts(g, 1, n, gidx, err, ms, inv, min_indexable, idx, &gr->err_zeros);
            Py_DECREF(errs);
            errs = ebins ? Py_BuildValue("(dddddlN)", gr->err_sum + gr->err_comp, gr->err_min, gr->err_max,
                                         gr->ok_min, gr->ok_max, gr->err_zeros, ebins)
                         : NULL;
            if (errs == NULL) {
                Py_DECREF(bins);
                goto fail;
            }
        }
        PyObject *key = Py_BuildValue("(LOO)", gr->window, gr->name, gr->kind);
        PyObject *val = Py_BuildValue("(lldddlNN)", gr->count, gr->errors, gr->sum + gr->comp, gr->min,
                                      gr->max, gr->zeros, bins, errs);
        int rc = (key && val) ? PyDict_SetItem(out, key, val) : -1;
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (rc < 0)
            goto fail;
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyMem_Free(groups);
    PyMem_Free(gidx);
    PyMem_Free(ms);
    PyMem_Free(idx);
    PyMem_Free(err);
    return out;
}

/* tail_offer(spans, start, out, decided, decided_old, pending_map, keep_errors, slow_ns,
 * ERROR, Pending, n_pending, remember, max_pending) -> (next, discarded, n_pending, stop):
 * TailKeeper._offer_one for spans[start:], in order, while they are the common cases (buffers
 * and decisions keyed by the span's local_root_id): a local trace already decided (dropped, or
 * kept), a local root with nothing interesting (dropped, its buffered spans too), a descendant
 * with nothing interesting (buffered). It stops at the first span it leaves to Python
 * (interesting ones, slow events, late spans of dropped local traces that are interesting,
 * anything odd): next is that span's index, stop 0. It also stops after a decision that
 * filled `decided` (stop 1: the caller swaps generations) or a buffered span that took
 * n_pending over max_pending (stop 2: the caller evicts). */
static PyObject *s_spans_attr = NULL;

static PyObject *
tail_offer(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[2]) ||
        !PyDict_CheckExact(args[3]) || !PyDict_CheckExact(args[4]) || !PyDict_Check(args[5]) ||
        span_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "tail_offer(spans, start, out, decided, decided_old, pending_map, "
                                         "keep_errors, slow_ns, ERROR, Pending, n_pending, remember, max_pending)");
        return NULL;
    }
    PyObject *spans = args[0], *out = args[2], *decided = args[3], *old = args[4], *pending_map = args[5];
    PyObject *error_status = args[8], *pending_cls = args[9];
    Py_ssize_t i = PyLong_AsSsize_t(args[1]), n_pending = PyLong_AsSsize_t(args[10]),
               remember = PyLong_AsSsize_t(args[11]), max_pending = PyLong_AsSsize_t(args[12]);
    int keep_errors = PyObject_IsTrue(args[6]);
    if ((i == -1 || n_pending == -1 || remember == -1 || max_pending == -1 || keep_errors < 0) && PyErr_Occurred())
        return NULL;
    long long slow = -1;
    if (args[7] != Py_None) {
        slow = PyLong_AsLongLong(args[7]);
        if (slow == -1 && PyErr_Occurred())
            return NULL;
    }
    Py_ssize_t discarded = 0;
    int stop = 0;
    for (; i < PyList_GET_SIZE(spans) && !stop; i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        if (Py_TYPE(span) != span_type || SLOT(span, F_LOCAL_ROOT_ID) == NULL || SLOT(span, F_EVENTS) == NULL ||
            SLOT(span, F_STATUS) == NULL || SLOT(span, F_START) == NULL || SLOT(span, F_END) == NULL ||
            SLOT(span, F_LOCAL_ROOT) == NULL)
            break;
        PyObject *key = SLOT(span, F_LOCAL_ROOT_ID), *events = SLOT(span, F_EVENTS);
        if (events != Py_None && (!PyList_CheckExact(events) || PyList_GET_SIZE(events) > 0))
            break; /* events may mark the span slow: Python looks */
        if (!PyLong_CheckExact(SLOT(span, F_START)) || !PyLong_CheckExact(SLOT(span, F_END)))
            break;
        int interesting = keep_errors && SLOT(span, F_STATUS) == error_status;
        if (!interesting && slow >= 0) {
            long long start = PyLong_AsLongLong(SLOT(span, F_START)), end = PyLong_AsLongLong(SLOT(span, F_END));
            if ((start == -1 || end == -1) && PyErr_Occurred()) {
                PyErr_Clear();
                break;
            }
            interesting = end - start >= slow;
        }
        PyObject *decision = PyDict_GetItemWithError(decided, key);
        if (decision == NULL && !PyErr_Occurred() && PyDict_GET_SIZE(old))
            decision = PyDict_GetItemWithError(old, key);
        if (decision == NULL && PyErr_Occurred())
            return NULL;
        if (decision != NULL) {
            if (decision == Py_True) {
                if (PyList_Append(out, span) < 0)
                    return NULL;
                continue;
            }
            if (decision != Py_False || interesting)
                break; /* kept late, or an odd decision: Python */
            discarded++;
            continue;
        }
        if (interesting)
            break;
        PyObject *pending = PyDict_GetItemWithError(pending_map, key);
        if (pending == NULL && PyErr_Occurred())
            return NULL;
        int root = PyObject_IsTrue(SLOT(span, F_LOCAL_ROOT));
        if (root < 0)
            return NULL;
        if (root) {
            if (pending != NULL) {
                PyObject *buffered = PyObject_GetAttr(pending, s_spans_attr);
                Py_ssize_t count = buffered == NULL ? -1 : PyObject_Length(buffered);
                Py_XDECREF(buffered);
                if (count < 0 || PyObject_DelItem(pending_map, key) < 0)
                    return NULL;
                n_pending -= count;
                discarded += count;
            }
            discarded++;
            if (PyDict_SetItem(decided, key, Py_False) < 0)
                return NULL;
            if (PyDict_GET_SIZE(decided) >= remember)
                stop = 1;
            continue;
        }
        if (pending == NULL) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            PyObject *born = PyFloat_FromDouble((double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
            Py_INCREF(key); /* the constructor runs Python: keep the key alive across it */
            PyObject *fresh = born == NULL ? NULL : PyObject_CallOneArg(pending_cls, born);
            Py_XDECREF(born);
            if (fresh == NULL) {
                Py_DECREF(key);
                return NULL;
            }
            int rc = PyObject_SetItem(pending_map, key, fresh);
            Py_DECREF(fresh);
            if (rc == 0) {
                pending = PyDict_GetItemWithError(pending_map, key);
                if (pending == NULL && !PyErr_Occurred())
                    PyErr_SetString(PyExc_RuntimeError, "pending buffer vanished");
            }
            Py_DECREF(key);
            if (rc < 0 || pending == NULL)
                return NULL;
        }
        PyObject *buffered = PyObject_GetAttr(pending, s_spans_attr);
        int rc = buffered == NULL ? -1 : PyList_Append(buffered, span);
        Py_XDECREF(buffered);
        if (rc < 0)
            return NULL;
        n_pending++;
        if (n_pending > max_pending)
            stop = 2;
    }
    return Py_BuildValue("(nnni)", i, discarded, n_pending, stop);
}

/* ---------------------------------------------------------------------------------------
 * The ASGI middleware's request start and finish (pitchey_trace.web), for the common case:
 * asgi_begin() does what ASGITracingMiddleware._start() and Options.response_headers_b() do,
 * request_finish() what web._common.finish_request() does for a response without an error, a
 * 5xx or a security status. Each returns NotImplemented, before changing anything, for every
 * other case, and the Python code (the reference, tested against this) does it all.
 */
enum {
    R_AUTH, R_LABEL, R_LAST, R_METHOD, R_ROUTE, R_SCOPE, R_SENT, R_SPAN, R_STATUS, R_USER, R_UNKNOWN,
    R_COUNT
};
static const char *state_slot_names[R_COUNT] = {
    "auth_failed", "label", "last_byte_ns", "method", "route", "scope", "sent", "span", "status",
    "user_id", "size_unknown",
};
static Py_ssize_t state_offset[R_COUNT];
static PyTypeObject *state_type = NULL; /* web._common.RequestState */
static PyObject *method_canon = NULL; /* {method: method} for KNOWN_METHODS */
static PyObject *known_methods = NULL, *extract_fn = NULL, *web_tracer = NULL, *server_kind = NULL,
                *pending_mark = NULL;
#define RSLOT(obj, f) (*(PyObject **)((char *)(obj) + state_offset[f]))

enum {
    W_TYPE, W_PATH, W_HEADERS, W_SCHEME, W_METHOD, W_QUERY, W_CLIENT, W_URL_SCHEME, W_URL_PATH,
    W_HTTP_METHOD, W_METHOD_ORIGINAL, W_URL_QUERY, W_USER_AGENT, W_BODY_SIZE, W_CLIENT_ADDRESS,
    W_ROUTE, W_STATUS, W_RESPONSE_SIZE, W_START_SPAN, W_PIPELINE, W_EMIT, W_REQUEST, W_ABORTED,
    W_OTHER, W_HTTP_LABEL, W_GET, W_HTTP, W_EMPTY, W_ROUTE_KEY, W_HTTP_VERSION, W_PROTOCOL_VERSION,
    W_V10, W_V11, W_V2, W_V3, W_PATHSEND, W_PATHSEND_METHOD, W_ROUTER, W_COUNT
};
static const char *web_names[W_COUNT] = {
    "type", "path", "headers", "scheme", "method", "query_string", "client", "url.scheme",
    "url.path", "http.request.method", "http.request.method_original", "url.query",
    "user_agent.original", "http.request.body.size", "client.address", "http.route",
    "http.response.status_code", "http.response.body.size", "start_span", "pipeline", "emit",
    "request", "aborted", "_OTHER", "HTTP", "GET", "http", "", "route", "http_version",
    "network.protocol.version", "1.0", "1.1", "2", "3", "http.response.pathsend", "response_pathsend",
    "router",
};
static PyObject *w[W_COUNT];

static PyObject *route_templates = NULL, *route_template_fn = NULL;

/* web_setup(RequestState, KNOWN_METHODS, extract, tracer, SpanKind.SERVER, PENDING_AUDIT,
 *           _route_templates, route_template) */
static PyObject *
web_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyType_Check(args[0]) || !PyFrozenSet_Check(args[1]) ||
        !PyDict_CheckExact(args[6]) || span_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "web_setup(RequestState, KNOWN_METHODS, extract, tracer, "
                                         "SpanKind.SERVER, PENDING_AUDIT, _route_templates, "
                                         "route_template) after setup()");
        return NULL;
    }
    Py_INCREF(args[6]);
    Py_XSETREF(route_templates, args[6]);
    Py_INCREF(args[7]);
    Py_XSETREF(route_template_fn, args[7]);
    if (object_slot_offsets(args[0], state_slot_names, R_COUNT, state_offset) < 0 ||
        intern_all(web_names, W_COUNT, w) < 0)
        return NULL;
    PyObject **targets[6] = {(PyObject **)&state_type, &known_methods, &extract_fn, &web_tracer,
                             &server_kind, &pending_mark};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*targets[i], args[i]);
    }
    PyObject *canon = PyDict_New(), *iter = canon ? PyObject_GetIter(known_methods) : NULL, *item;
    if (iter == NULL) {
        Py_XDECREF(canon);
        return NULL;
    }
    while ((item = PyIter_Next(iter)) != NULL) {
        int rc = PyUnicode_CheckExact(item) ? PyDict_SetItem(canon, item, item) : 0;
        Py_DECREF(item);
        if (rc < 0)
            break;
    }
    Py_DECREF(iter);
    if (PyErr_Occurred()) {
        Py_DECREF(canon);
        return NULL;
    }
    Py_XSETREF(method_canon, canon);
    Py_RETURN_NONE;
}

/* scope[key] (borrowed) or NULL with no error when absent */
static PyObject *
scope_get(PyObject *scope, int key)
{
    return PyDict_GetItemWithError(scope, w[key]);
}

static PyObject *new_sender(PyObject *send, PyObject *state, PyObject *extra);
static PyObject *begin_from(PyObject *scope, PyObject *path, PyObject *start, PyObject *hname,
                            PyObject *send, PyObject *headers, PyObject *scheme, PyObject *method,
                            PyObject *query, PyObject *client);

/* asgi_begin(scope, path, start_ns, header_name_b, send) -> (state, sender, client_address)
 * or NotImplemented (see above). The span starts with start_ns and is not made current; the
 * sender is the send callable to hand the app. */
static PyObject *
asgi_begin(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || state_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "asgi_begin(scope, path, start_ns, header_name_b, send) after web_setup()");
        return NULL;
    }
    PyObject *scope = args[0], *path = args[1], *start = args[2], *hname = args[3], *send = args[4];
    if (!PyDict_CheckExact(scope) || !PyUnicode_CheckExact(path) || !PyLong_CheckExact(start) ||
        (hname != Py_None && !PyBytes_CheckExact(hname)))
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *headers = scope_get(scope, W_HEADERS), *scheme = scope_get(scope, W_SCHEME),
             *method = scope_get(scope, W_METHOD), *query = scope_get(scope, W_QUERY),
             *client = scope_get(scope, W_CLIENT);
    if (PyErr_Occurred())
        return NULL;
    /* held until the end: extract() and start_span() can run Python, and the scope could
     * change meanwhile (another thread) */
    PyObject *held[5] = {Py_XNewRef(headers), Py_XNewRef(scheme), Py_XNewRef(method),
                         Py_XNewRef(query), Py_XNewRef(client)};
    PyObject *result = begin_from(scope, path, start, hname, send, headers, scheme, method, query, client);
    for (int i = 0; i < 5; i++)
        Py_XDECREF(held[i]);
    return result;
}

static PyObject *
begin_from(PyObject *scope, PyObject *path, PyObject *start, PyObject *hname, PyObject *send,
           PyObject *headers, PyObject *scheme, PyObject *method, PyObject *query, PyObject *client)
{
    if (headers != NULL && headers != Py_None && !PyList_CheckExact(headers) && !PyTuple_CheckExact(headers))
        Py_RETURN_NOTIMPLEMENTED;
    if (scheme == NULL || scheme == Py_None || (PyUnicode_CheckExact(scheme) && PyUnicode_GET_LENGTH(scheme) == 0))
        scheme = w[W_HTTP];
    if (method == NULL || method == Py_None || (PyUnicode_CheckExact(method) && PyUnicode_GET_LENGTH(method) == 0))
        method = w[W_GET];
    if (!PyUnicode_CheckExact(scheme) || !PyUnicode_CheckExact(method) ||
        (query != NULL && query != Py_None && !PyBytes_CheckExact(query)) ||
        (client != NULL && client != Py_None && !PyTuple_CheckExact(client) && !PyList_CheckExact(client)))
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *attrs = PyDict_New(), *label, *address = Py_None, *result = Py_NotImplemented;
    PyObject *parent = NULL, *span = NULL, *state = NULL, *extra = NULL;
    if (attrs == NULL)
        return NULL;
    Py_INCREF(result);
    if (PyDict_SetItem(attrs, w[W_URL_SCHEME], scheme) < 0 || PyDict_SetItem(attrs, w[W_URL_PATH], path) < 0)
        goto error;
    /* network.protocol.version (web._common.PROTOCOL_VERSIONS): the ASGI forms here, any other
     * text to Python; absent or not a str: not recorded */
    PyObject *version = PyDict_GetItemWithError(scope, w[W_HTTP_VERSION]);
    if (version == NULL && PyErr_Occurred())
        goto error;
    if (version != NULL && PyUnicode_CheckExact(version)) {
        PyObject *known;
        if (PyUnicode_CompareWithASCIIString(version, "1.1") == 0)
            known = w[W_V11];
        else if (PyUnicode_CompareWithASCIIString(version, "2") == 0 ||
                 PyUnicode_CompareWithASCIIString(version, "2.0") == 0)
            known = w[W_V2];
        else if (PyUnicode_CompareWithASCIIString(version, "1.0") == 0)
            known = w[W_V10];
        else if (PyUnicode_CompareWithASCIIString(version, "3") == 0 ||
                 PyUnicode_CompareWithASCIIString(version, "3.0") == 0)
            known = w[W_V3];
        else
            goto fallback;
        if (PyDict_SetItem(attrs, w[W_PROTOCOL_VERSION], known) < 0)
            goto error;
    }
    /* the set's own str for a known method: the span name cache is keyed by identity */
    PyObject *canon = PyDict_GetItemWithError(method_canon, method);
    if (canon == NULL && PyErr_Occurred())
        goto error;
    if (canon != NULL) {
        label = method = canon;
        if (PyDict_SetItem(attrs, w[W_HTTP_METHOD], method) < 0)
            goto error;
    }
    else {
        label = w[W_HTTP_LABEL];
        if (PyDict_SetItem(attrs, w[W_HTTP_METHOD], w[W_OTHER]) < 0 ||
            PyDict_SetItem(attrs, w[W_METHOD_ORIGINAL], method) < 0)
            goto error;
    }
    if (query != NULL && query != Py_None && PyBytes_GET_SIZE(query) > 0) {
        PyObject *text = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(query), PyBytes_GET_SIZE(query), NULL);
        int rc = text == NULL ? -1 : PyDict_SetItem(attrs, w[W_URL_QUERY], text);
        Py_XDECREF(text);
        if (rc < 0)
            goto error;
    }
    int propagated = 0;
    Py_ssize_t n = headers == NULL || headers == Py_None ? 0 : PySequence_Fast_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            goto fallback; /* (a list pair, or a malformed entry: the Python loop decides) */
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        if (!PyBytes_CheckExact(name)) {
            propagated = 1; /* extract() decides */
            continue;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(name);
        const char *raw = PyBytes_AS_STRING(name);
        if (len == 10 && memcmp(raw, "user-agent", 10) == 0) {
            if (!PyBytes_CheckExact(value))
                goto fallback;
            PyObject *text = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), NULL);
            int rc = text == NULL ? -1 : PyDict_SetItem(attrs, w[W_USER_AGENT], text);
            Py_XDECREF(text);
            if (rc < 0)
                goto error;
        }
        else if (len == 11 && memcmp(raw, "traceparent", 11) == 0)
            propagated = 1;
        else if (len == 17 && memcmp(raw, "transfer-encoding", 17) == 0)
            goto fallback; /* a chunked body (rare): Python counts what the app receives */
        else if (len == 14 && memcmp(raw, "content-length", 14) == 0) {
            if (!PyBytes_CheckExact(value))
                goto fallback;
            PyObject *size = PyNumber_Long(value);
            if (size == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_ValueError))
                    goto error;
                PyErr_Clear(); /* not a number: no body-size attribute, as in Python */
            }
            else {
                int rc = PyDict_SetItem(attrs, w[W_BODY_SIZE], size);
                Py_DECREF(size);
                if (rc < 0)
                    goto error;
            }
        }
    }
    if (client != NULL && client != Py_None && PySequence_Fast_GET_SIZE(client) > 0) {
        address = PySequence_Fast_GET_ITEM(client, 0);
        int truthy = PyObject_IsTrue(address);
        if (truthy < 0)
            goto error;
        if (!truthy)
            address = Py_None;
        else if (PyDict_SetItem(attrs, w[W_CLIENT_ADDRESS], address) < 0)
            goto error;
    }
    else if (client != NULL && client != Py_None)
        address = Py_None;
    if (propagated) {
        parent = PyObject_CallOneArg(extract_fn, headers);
        if (parent == NULL)
            goto error;
    }
    PyObject *call[7] = {web_tracer, label, attrs, server_kind, parent ? parent : Py_None, Py_None, start};
    /* the C method itself when the tracer's class has it (saves the method lookup and call) */
    PyObject *own = _PyType_Lookup(Py_TYPE(web_tracer), w[W_START_SPAN]);
    if (own != NULL && Py_TYPE(own) == &PyMethodDescr_Type &&
        ((PyMethodDescrObject *)own)->d_method == &tracer_method)
        span = tracer_start_span(web_tracer, call + 1, 6, NULL);
    else
        span = PyObject_VectorcallMethod(w[W_START_SPAN], call, 7 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (span == NULL)
        goto error;
    extra = PyList_New(0);
    if (extra == NULL)
        goto error;
    if (hname != Py_None) {
        PyObject *tid = PyObject_GetAttr(span, s_trace_id);
        if (tid != NULL && PyObject_Not(tid) == 1) { /* tracing suppressed: no trace to name */
            Py_DECREF(tid);
            goto no_header;
        }
        PyObject *hex = tid == NULL ? NULL : hex_id(tid, 16);
        Py_XDECREF(tid);
        if (hex == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto fallback;
        }
        PyObject *value = PyBytes_FromStringAndSize((const char *)PyUnicode_1BYTE_DATA(hex), 32);
        Py_DECREF(hex);
        PyObject *pair = value == NULL ? NULL : PyTuple_Pack(2, hname, value);
        Py_XDECREF(value);
        if (pair == NULL)
            goto error;
        int rc = PyList_Append(extra, pair);
        Py_DECREF(pair);
        if (rc < 0)
            goto error;
    }
no_header:
    state = state_type->tp_alloc(state_type, 0);
    if (state == NULL)
        goto error;
    PyObject *method_value = PyDict_GetItemWithError(attrs, w[W_HTTP_METHOD]);
    if (method_value == NULL)
        goto error;
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        goto error;
    RSLOT(state, R_SPAN) = Py_NewRef(span);
    RSLOT(state, R_METHOD) = Py_NewRef(method_value);
    RSLOT(state, R_LABEL) = Py_NewRef(label);
    RSLOT(state, R_ROUTE) = Py_NewRef(Py_None);
    RSLOT(state, R_USER) = Py_NewRef(Py_None);
    RSLOT(state, R_STATUS) = Py_NewRef(zero);
    RSLOT(state, R_SENT) = Py_NewRef(zero);
    RSLOT(state, R_LAST) = zero;
    RSLOT(state, R_AUTH) = Py_NewRef(Py_False);
    RSLOT(state, R_UNKNOWN) = Py_NewRef(Py_False);
    RSLOT(state, R_SCOPE) = Py_NewRef(scope);
    PyObject *sender = new_sender(send, state, extra);
    if (sender == NULL)
        goto error;
    Py_SETREF(result, PyTuple_Pack(3, state, sender, address));
    Py_DECREF(sender);
    if (result == NULL)
        goto done;
    goto done;
fallback:
    goto done; /* result is still NotImplemented */
error:
    Py_CLEAR(result);
done:
    Py_DECREF(attrs);
    Py_XDECREF(parent);
    Py_XDECREF(span);
    Py_XDECREF(state);
    Py_XDECREF(extra);
    return result;
}

/* The send callable the middleware hands the app (what the Python traced_send closure does):
 * counts body bytes, times the last one, records the status and appends the correlation
 * headers to a copy of the response-start message; returns the server's awaitable. */
typedef struct {
    PyObject_HEAD
    PyObject *send, *state, *extra;
    vectorcallfunc vectorcall;
} SenderObject;

static PyObject *s_type_key, *s_body, *s_more_body, *s_status_key, *s_headers_key, *s_resp_body,
    *s_resp_start;

static int
sender_traverse(SenderObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->send);
    Py_VISIT(self->state);
    Py_VISIT(self->extra);
    return 0;
}

static int
sender_clear(SenderObject *self)
{
    Py_CLEAR(self->send);
    Py_CLEAR(self->state);
    Py_CLEAR(self->extra);
    return 0;
}

static void
sender_dealloc(SenderObject *self)
{
    PyObject_GC_UnTrack(self);
    sender_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A copy of a response-start message with the extra headers appended; NULL with no error when
 * the message is not shaped for it (the original then goes out unchanged). */
/* Whether the first `napp` entries of `headers` (the app's own) name `name` (lowercase
 * bytes) in any case: asgi.py's _carries (bytes names of tuple / list pairs only). */
static int
app_has_header(PyObject *headers, Py_ssize_t napp, PyObject *name)
{
    if (!PyBytes_Check(name))
        return 0;
    Py_ssize_t n = PyBytes_GET_SIZE(name);
    const char *want = PyBytes_AS_STRING(name);
    for (Py_ssize_t i = 0; i < napp; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i), *key;
        if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) > 0)
            key = PyTuple_GET_ITEM(pair, 0);
        else if (PyList_Check(pair) && PyList_GET_SIZE(pair) > 0)
            key = PyList_GET_ITEM(pair, 0);
        else
            continue;
        if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != n)
            continue;
        const char *got = PyBytes_AS_STRING(key);
        Py_ssize_t j = 0;
        for (; j < n; j++) {
            char c = got[j];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c + ('a' - 'A'));
            if (c != want[j])
                break;
        }
        if (j == n)
            return 1;
    }
    return 0;
}

static PyObject *
with_headers(PyObject *message, PyObject *extra)
{
    PyObject *copy = PyDict_Copy(message);
    if (copy == NULL)
        return NULL;
    PyObject *old = PyDict_GetItemWithError(copy, s_headers_key);
    PyObject *headers = old == NULL ? (PyErr_Occurred() ? NULL : PyList_New(0)) : PySequence_List(old);
    if (headers == NULL) {
        Py_DECREF(copy);
        PyErr_Clear();
        return NULL;
    }
    /* (a header the app set itself, its own X-Trace-Id, is kept and not sent twice) */
    Py_ssize_t napp = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(extra); i++) {
        PyObject *pair = PyList_GET_ITEM(extra, i);
        if (napp && PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 &&
            app_has_header(headers, napp, PyTuple_GET_ITEM(pair, 0)))
            continue;
        if (PyList_Append(headers, pair) < 0) {
            Py_DECREF(headers);
            Py_DECREF(copy);
            PyErr_Clear();
            return NULL;
        }
    }
    int rc = PyDict_SetItem(copy, s_headers_key, headers);
    Py_DECREF(headers);
    if (rc < 0) {
        Py_DECREF(copy);
        PyErr_Clear();
        return NULL;
    }
    return copy;
}

/* state.<slot> += n (an int slot); -1 on error */
static int
add_to_slot(PyObject *state, int slot, Py_ssize_t n)
{
    PyObject *add = PyLong_FromSsize_t(n);
    PyObject *sum = add == NULL ? NULL : PyNumber_Add(RSLOT(state, slot), add);
    Py_XDECREF(add);
    if (sum == NULL)
        return -1;
    Py_SETREF(RSLOT(state, slot), sum);
    return 0;
}

static PyObject *
sender_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    SenderObject *self = (SenderObject *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "send() takes one message");
        return NULL;
    }
    PyObject *message = args[0], *copy = NULL;
    PyObject *state = self->state;
    /* a dict message to a state whose slots are set: anything else goes to the server as is */
    if (PyDict_CheckExact(message) && RSLOT(state, R_SENT) != NULL && RSLOT(state, R_STATUS) != NULL &&
        RSLOT(state, R_LAST) != NULL) {
        PyObject *mtype = PyDict_GetItemWithError(message, s_type_key);
        if (mtype == NULL && PyErr_Occurred())
            return NULL;
        if (mtype != NULL && PyUnicode_CheckExact(mtype)) {
            if (mtype == s_resp_body || PyUnicode_Compare(mtype, s_resp_body) == 0) {
                PyObject *body = PyDict_GetItemWithError(message, s_body);
                if (body == NULL && PyErr_Occurred())
                    return NULL;
                if (body != NULL && body != Py_None) {
                    Py_ssize_t size = PyObject_Length(body);
                    if (size < 0)
                        return NULL; /* (as len() in the Python wrapper) */
                    if (size > 0 && add_to_slot(state, R_SENT, size) < 0)
                        return NULL;
                }
                PyObject *more = PyDict_GetItemWithError(message, s_more_body);
                if (more == NULL && PyErr_Occurred())
                    return NULL;
                int more_body = more == NULL ? 0 : PyObject_IsTrue(more);
                if (more_body < 0)
                    return NULL;
                if (!more_body) {
                    PyObject *now = now_ns();
                    if (now == NULL)
                        return NULL;
                    Py_SETREF(RSLOT(state, R_LAST), now);
                }
            }
            else if (mtype == s_resp_start || PyUnicode_Compare(mtype, s_resp_start) == 0) {
                PyObject *status = PyDict_GetItemWithError(message, s_status_key);
                if (status == NULL && PyErr_Occurred())
                    return NULL;
                if (status == NULL) {
                    status = PyLong_FromLong(0);
                    if (status == NULL)
                        return NULL;
                    Py_SETREF(RSLOT(state, R_STATUS), status);
                }
                else
                    Py_SETREF(RSLOT(state, R_STATUS), Py_NewRef(status));
                if (self->extra != NULL && PyList_GET_SIZE(self->extra) > 0)
                    copy = with_headers(message, self->extra);
            }
            else if (mtype == w[W_PATHSEND] || PyUnicode_Compare(mtype, w[W_PATHSEND]) == 0) {
                /* a file the server sends by path (rare): RequestState.response_pathsend()
                 * counts it, the Python sender's code, and hands it to the server */
                PyObject *call[3] = {state, message, self->send};
                return PyObject_VectorcallMethod(w[W_PATHSEND_METHOD], call,
                                                 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            }
        }
    }
    PyObject *send_args[1] = {copy != NULL ? copy : message};
    PyObject *result = PyObject_Vectorcall(self->send, send_args, 1, NULL);
    Py_XDECREF(copy);
    return result;
}

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pitchey_trace._speedups.Sender",
    .tp_basicsize = sizeof(SenderObject),
    .tp_dealloc = (destructor)sender_dealloc,
    .tp_vectorcall_offset = offsetof(SenderObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The send callable the ASGI middleware hands the app (C accelerator).",
    .tp_traverse = (traverseproc)sender_traverse,
    .tp_clear = (inquiry)sender_clear,
};

static PyObject *
new_sender(PyObject *send, PyObject *state, PyObject *extra)
{
    SenderObject *self = PyObject_GC_New(SenderObject, &SenderType);
    if (self == NULL)
        return NULL;
    self->send = Py_NewRef(send);
    self->state = Py_NewRef(state);
    self->extra = Py_XNewRef(extra);
    self->vectorcall = sender_vectorcall;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* Pipeline.emit(item), in C: append to the queue while there is room, else the Python method
 * (which counts the drop, or the item refused after shutdown: max_queue_size is 0 then). */
static int
emit(PyObject *pipeline, PyObject *item)
{
    PyObject *hot, *f[5], *r = NULL;
    int got = pipeline_hot(pipeline, &hot, f);
    if (got < 0)
        return -1;
    if (got) {
        Py_ssize_t n = PyObject_Length(f[1]);
        long long limit = PyLong_AsLongLong(f[2]);
        if (n >= 0 && !(limit == -1 && PyErr_Occurred()) && n < limit)
            r = PyObject_CallOneArg(f[0], item);
        else if (!PyErr_Occurred())
            r = PyObject_CallMethodOneArg(pipeline, w[W_EMIT], item);
        Py_DECREF(hot);
    }
    else
        r = PyObject_CallMethodOneArg(pipeline, w[W_EMIT], item);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* "{label} {route}" through a small cache keyed by the identity of both texts (the method
 * labels are constants and a route's template is one str object), which holds them: a
 * request's span name is usually built once per route and method, not once per request. */
#define NAME_CACHE 64
static struct {
    PyObject *label, *route, *name;
} name_cache[NAME_CACHE];

static PyObject *
span_name(PyObject *label, PyObject *route)
{
    size_t slot = (((uintptr_t)label >> 4) ^ ((uintptr_t)route >> 4) * 31) % NAME_CACHE;
    if (name_cache[slot].label == label && name_cache[slot].route == route)
        return Py_NewRef(name_cache[slot].name);
    PyObject *name = PyUnicode_FromFormat("%U %U", label, route);
    if (name != NULL) {
        PyObject *old[3] = {name_cache[slot].label, name_cache[slot].route, name_cache[slot].name};
        name_cache[slot].label = Py_NewRef(label);
        name_cache[slot].route = Py_NewRef(route);
        name_cache[slot].name = Py_NewRef(name);
        for (int i = 0; i < 3; i++)
            Py_XDECREF(old[i]);
    }
    return name;
}

/* str(status) for an int status code (st its value), cached for 100..599. */
static PyObject *status_texts[500];

static PyObject *
status_text(PyObject *status, long st)
{
    if (st < 100 || st > 599)
        return PyObject_Str(status);
    PyObject **slot = &status_texts[st - 100];
    if (*slot == NULL)
        *slot = PyObject_Str(status);
    return Py_XNewRef(*slot);
}

static PyObject *span_end(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);

/* request_finish(state, route, start_ns, end_ns, client_address, audit) -> True, or
 * NotImplemented (nothing changed) for a span that is not a plain open Span, a status of 5xx,
 * 401, 403 or 429, body bytes counted for a response without a body (HEAD, 1xx, 204, 304), an
 * actor to find in baggage, or too little room for the attributes. */
static PyObject *
request_finish(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || state_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "request_finish(state, route, start_ns, end_ns, client, audit)");
        return NULL;
    }
    PyObject *state = args[0], *route = args[1], *start = args[2], *end = args[3], *client = args[4];
    int audit = PyObject_IsTrue(args[5]);
    if (audit < 0)
        return NULL;
    if (Py_TYPE(state) != state_type || !PyLong_CheckExact(start) || !PyLong_CheckExact(end) ||
        (route != Py_None && !PyUnicode_CheckExact(route)))
        Py_RETURN_NOTIMPLEMENTED;
    for (int i = 0; i < R_COUNT; i++) {
        if (RSLOT(state, i) == NULL)
            Py_RETURN_NOTIMPLEMENTED;
    }
    /* a file sent by path whose size is unknown: the body size is left out, by Python (rare) */
    if (RSLOT(state, R_UNKNOWN) != Py_False)
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *span = RSLOT(state, R_SPAN), *status = RSLOT(state, R_STATUS), *label = RSLOT(state, R_LABEL),
             *actor = RSLOT(state, R_USER);
    if (Py_TYPE(span) != span_type || !slots_set(span, F_ATTRS, F_END, F_PIPE) || SLOT(span, F_NAME) == NULL ||
        SLOT(span, F_BAGGAGE) == NULL || SLOT(span, F_TRACE_ID) == NULL || SLOT(span, F_SPAN_ID) == NULL) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *attrs = SLOT(span, F_ATTRS), *ended = SLOT(span, F_END);
    if (!PyLong_CheckExact(status) || !PyUnicode_CheckExact(label) || !PyDict_CheckExact(attrs) ||
        !PyLong_CheckExact(ended) || _PyLong_Sign(ended) != 0)
        Py_RETURN_NOTIMPLEMENTED;
    long st = PyLong_AsLong(status);
    if (st == -1 && PyErr_Occurred())
        return NULL;
    if (st >= 500 || st == 401 || st == 403 || st == 429 || st < 0)
        Py_RETURN_NOTIMPLEMENTED;
    /* no body goes out for HEAD, 1xx, 204 and 304 (web._common.body_size): bytes the app
     * handed over then are not counted, by the Python path (rare) */
    PyObject *sent = RSLOT(state, R_SENT), *method = RSLOT(state, R_METHOD);
    if (!(PyLong_CheckExact(sent) && _PyLong_Sign(sent) == 0) &&
        (st < 200 || st == 204 || st == 304 ||
         (PyUnicode_CheckExact(method) && PyUnicode_GET_LENGTH(method) == 4 &&
          PyUnicode_CompareWithASCIIString(method, "HEAD") == 0)))
        Py_RETURN_NOTIMPLEMENTED;
    if (actor == Py_None && (!PyTuple_CheckExact(SLOT(span, F_BAGGAGE)) || PyTuple_GET_SIZE(SLOT(span, F_BAGGAGE))))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t limit = max_attributes_limit();
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (PyDict_GET_SIZE(attrs) + 3 > limit)
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *pipeline = NULL;
    if (audit) {
        pipeline = PyObject_GetAttr(web_tracer, w[W_PIPELINE]);
        if (pipeline == NULL)
            return NULL;
    }
    /* held for the rest: emit() runs Python, after which another thread could have replaced
     * the state's slots */
    Py_INCREF(span);
    Py_INCREF(status);
    Py_INCREF(label);
    Py_INCREF(actor);
    Py_INCREF(attrs);
    /* from here on: the Python finish_request's common path */
    int has_route = route != Py_None && PyUnicode_GET_LENGTH(route) > 0;
    PyObject *name = has_route ? span_name(label, route) : Py_NewRef(label);
    PyObject *result = NULL, *pending = NULL, *outcome = NULL, *duration = NULL;
    if (name == NULL)
        goto done;
    Py_SETREF(SLOT(span, F_NAME), Py_NewRef(name));
    if ((has_route && PyDict_SetItem(attrs, w[W_ROUTE], route) < 0) ||
        (st && PyDict_SetItem(attrs, w[W_STATUS], status) < 0) ||
        PyDict_SetItem(attrs, w[W_RESPONSE_SIZE], RSLOT(state, R_SENT)) < 0)
        goto done;
    if (pipeline != NULL && pipeline != Py_None) {
        outcome = st ? status_text(status, st) : Py_NewRef(w[W_ABORTED]);
        duration = PyNumber_Subtract(end, start);
        if (outcome == NULL || duration == NULL)
            goto done;
        pending = PyTuple_Pack(13, pending_mark, w[W_REQUEST], end, SLOT(span, F_TRACE_ID),
                               SLOT(span, F_SPAN_ID), actor, name, has_route ? route : w[W_EMPTY],
                               outcome, RSLOT(state, R_METHOD), status, duration, client);
        if (pending == NULL)
            goto done;
        if (emit(pipeline, pending) < 0)
            goto done;
    }
    PyObject *end_args[1] = {end};
    PyObject *r = span_end(span, end_args, 1, NULL);
    if (r == NULL)
        goto done;
    Py_DECREF(r);
    result = Py_NewRef(Py_True);
done:
    Py_XDECREF(name);
    Py_XDECREF(pipeline);
    Py_XDECREF(pending);
    Py_XDECREF(outcome);
    Py_XDECREF(duration);
    Py_DECREF(span);
    Py_DECREF(status);
    Py_DECREF(label);
    Py_DECREF(actor);
    Py_DECREF(attrs);
    return result;
}

/* RequestState.resolve_route(): the route set by set_route(), else the template Starlette
 * matched (web._common.route_template, through its cache), else None. A new reference. */
static PyObject *
resolve_route(PyObject *state)
{
    PyObject *route = RSLOT(state, R_ROUTE), *scope = RSLOT(state, R_SCOPE);
    if (route != Py_None)
        return Py_NewRef(route);
    if (scope == Py_None)
        return Py_NewRef(Py_None);
    if (PyDict_CheckExact(scope)) {
        PyObject *matched = PyDict_GetItemWithError(scope, w[W_ROUTE_KEY]);
        if (matched == NULL && PyErr_Occurred())
            return NULL;
        if (matched == NULL || matched == Py_None)
            return Py_NewRef(Py_None);
        PyObject *key = PyLong_FromVoidPtr(matched);
        if (key == NULL)
            return NULL;
        PyObject *cached = PyDict_GetItemWithError(route_templates, key);
        Py_DECREF(key);
        if (cached == NULL && PyErr_Occurred())
            return NULL;
        /* (route, outermost router, template): the same route under another router (an app
         * mounted in another, served alone too) has another template */
        if (cached != NULL && PyTuple_CheckExact(cached) && PyTuple_GET_SIZE(cached) == 3 &&
            PyTuple_GET_ITEM(cached, 0) == matched) {
            PyObject *router = PyDict_GetItemWithError(scope, w[W_ROUTER]);
            if (router == NULL && PyErr_Occurred())
                return NULL;
            if (PyTuple_GET_ITEM(cached, 1) == (router == NULL ? Py_None : router))
                return Py_NewRef(PyTuple_GET_ITEM(cached, 2));
        }
    }
    return PyObject_CallOneArg(route_template_fn, scope);
}

/* request_end(state, start_ns, client_address, audit) -> True or NotImplemented: what the
 * ASGI middleware does once the app returned without an error: the route resolved, the end
 * taken as the last byte's time (or now), then request_finish(). */
static PyObject *
request_end(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || state_type == NULL || route_templates == NULL) {
        PyErr_SetString(PyExc_TypeError, "request_end(state, start_ns, client, audit) after web_setup()");
        return NULL;
    }
    PyObject *state = args[0];
    if (Py_TYPE(state) != state_type || RSLOT(state, R_ROUTE) == NULL || RSLOT(state, R_SCOPE) == NULL ||
        RSLOT(state, R_LAST) == NULL)
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *route = resolve_route(state);
    if (route == NULL)
        return NULL;
    PyObject *last = RSLOT(state, R_LAST), *end;
    int truthy = PyObject_IsTrue(last);
    if (truthy < 0) {
        Py_DECREF(route);
        return NULL;
    }
    end = truthy ? Py_NewRef(last) : now_ns();
    if (end == NULL) {
        Py_DECREF(route);
        return NULL;
    }
    PyObject *call[6] = {state, route, args[1], end, args[2], args[3]};
    PyObject *result = request_finish(module, call, 6);
    Py_DECREF(route);
    Py_DECREF(end);
    return result;
}

/* build_audit_record(pending, service, environment, key_cache, text_cache, sql_cache,
 * max_attributes) -> the sanitized request audit record Sanitizer._request_audit builds from a
 * tuple the middleware queued (records.request_audit), or None when a text is not in the
 * sanitizer's caches yet (or anything else is unusual): the Python method then builds it, and
 * fills the caches. Untracked like span records (strings, numbers and a map of them). */
enum {
    A_SCHEMA, A_TYPE, A_RECORD_ID, A_CATEGORY, A_TIME, A_TRACE_ID, A_SPAN_ID, A_SERVICE, A_ENV, A_ACTOR,
    A_ACTION, A_TARGET, A_OUTCOME, A_ATTRIBUTES, A_METHOD, A_STATUS, A_DURATION, A_CLIENT,
    A_AUDIT, A_ROUND, A_COUNT
};
static const char *audit_key_names[A_COUNT] = {
    "schema", "type", "record_id", "category", "time_unix_nano", "trace_id", "span_id", "service",
    "environment", "actor", "action", "target", "outcome", "attributes", "http.request.method",
    "http.response.status_code", "duration_ms", "client.address", "audit", "__round__",
};
static PyObject *audit_keys[A_COUNT];
static PyObject *int_1 = NULL, *int_3 = NULL;
static PyObject *audit_template = NULL; /* {key: None} for the 14 record keys, in order */
/* {key: None} for its attributes: method, status, duration_ms [, client.address] */
static PyObject *audit_attr_templates[2] = {NULL, NULL};
static fill_map audit_attr_fill[2] = {{NULL, 0, {0}}, {NULL, 0, {0}}};
static PyObject *float_round = NULL;    /* float.__round__ */

/* The cached sanitized form of a str (borrowed), or NULL: not cached / not a str (no error
 * set) or a failed lookup (error set). */
static PyObject *
cached_text(PyObject *text_cache, PyObject *value)
{
    if (!PyUnicode_CheckExact(value))
        return NULL;
    return PyDict_GetItemWithError(text_cache, value);
}

/* round(duration_ns / 1e6, 3), exactly as Python computes it. For 0 <= d < 2**50 ns whose
 * microsecond remainder is not a tie (500), float(d / 1e6) lies on the same side of every
 * rounding boundary as d / 1e6 itself (the float's error, below 2.4e-7 ms there, is smaller
 * than the 1e-6 ms to the nearest tie), so the decimal Python rounds to is q / 1000 with q the
 * exactly rounded microseconds, and q / 1000.0 is the double nearest to it, as Python returns.
 * Ties and anything else go through float.__round__ itself. */
static PyObject *
audit_ms(PyObject *duration)
{
    int overflow = 0;
    long long d = PyLong_AsLongLongAndOverflow(duration, &overflow);
    if (d == -1 && !overflow && PyErr_Occurred())
        return NULL;
    if (!overflow && d >= 0 && d < (1LL << 50) && d % 1000 != 500) {
        long long q = d / 1000 + (d % 1000 > 500);
        return PyFloat_FromDouble((double)q / 1000.0);
    }
    double ns = PyLong_AsDouble(duration);
    if (ns == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *raw = PyFloat_FromDouble(ns / 1e6);
    if (raw == NULL)
        return NULL;
    PyObject *round_args[2] = {raw, int_3};
    PyObject *ms = PyObject_Vectorcall(float_round, round_args, 2, NULL);
    Py_DECREF(raw);
    return ms;
}

static PyObject *audit_record_memo(PyObject *const *args, key_memo *memo, key_memo *texts);

/* random_id() for a record id, also before install_methods() gave the generator its seed source
 * (the module used on its own, as in pure-Python mode): then it is seeded from the random
 * module's getrandbits, which is put back to NULL so that start_span() still requires
 * install_methods(). */
static PyObject *
audit_random_id(void)
{
    if (!rng_seeded && getrandbits_fn == NULL) {
        PyObject *random = PyImport_ImportModule("random");
        if (random == NULL)
            return NULL;
        getrandbits_fn = PyObject_GetAttrString(random, "getrandbits");
        Py_DECREF(random);
        if (getrandbits_fn == NULL)
            return NULL;
        int rc = rng_seed();
        Py_CLEAR(getrandbits_fn);
        if (rc < 0)
            return NULL;
    }
    return random_id(int_64);
}

static PyObject *
build_audit_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "build_audit_record(pending, service, environment, "
                                         "key_cache, text_cache, sql_cache, max_attributes)");
        return NULL;
    }
    return audit_record_memo(args, NULL, NULL);
}

/* cached_text() through `texts` (NULL: none), by the text's identity: the texts of request
 * audits are mostly the same few objects (service, environment, route, status texts). */
static PyObject *
memo_text(key_memo *texts, PyObject *text_cache, PyObject *value)
{
    if (texts != NULL) {
        for (int i = 0; i < texts->n; i++) {
            if (texts->key[i] == value)
                return texts->new_key[i];
        }
    }
    PyObject *clean = cached_text(text_cache, value);
    if (clean != NULL && texts != NULL && texts->n < KEY_MEMO) {
        texts->key[texts->n] = Py_NewRef(value);
        texts->new_key[texts->n] = Py_NewRef(clean);
        texts->n++;
    }
    return clean;
}

/* build_audit_record(), remembering key decisions in memo and sanitized texts in texts (NULL:
 * none) */
static PyObject *
audit_record_memo(PyObject *const *args, key_memo *memo, key_memo *texts)
{
    if (!PyTuple_CheckExact(args[0]) || !PyDict_CheckExact(args[3]) ||
        !PyDict_CheckExact(args[4]) || !PyDict_CheckExact(args[5])) {
        PyErr_SetString(PyExc_TypeError, "build_audit_record(pending, service, environment, "
                                         "key_cache, text_cache, sql_cache, max_attributes)");
        return NULL;
    }
    PyObject *p = args[0], *text_cache = args[4];
    Py_ssize_t max_attributes = PyLong_AsSsize_t(args[6]);
    if (max_attributes == -1 && PyErr_Occurred())
        return NULL;
    if (PyTuple_GET_SIZE(p) != 13 || max_attributes < 4)
        Py_RETURN_NONE;
    PyObject *when = PyTuple_GET_ITEM(p, 2), *trace_id = PyTuple_GET_ITEM(p, 3),
             *span_id = PyTuple_GET_ITEM(p, 4), *actor = PyTuple_GET_ITEM(p, 5),
             *status = PyTuple_GET_ITEM(p, 10), *duration = PyTuple_GET_ITEM(p, 11),
             *client = PyTuple_GET_ITEM(p, 12);
    /* texts: category, service, environment, action, target, outcome (and actor, a str or None) */
    PyObject *raw[6] = {PyTuple_GET_ITEM(p, 1), args[1], args[2], PyTuple_GET_ITEM(p, 6),
                        PyTuple_GET_ITEM(p, 7), PyTuple_GET_ITEM(p, 8)};
    PyObject *clean[6];
    for (int i = 0; i < 6; i++) {
        clean[i] = memo_text(texts, text_cache, raw[i]);
        if (clean[i] == NULL) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
    }
    PyObject *clean_actor = Py_None;
    if (actor != Py_None) {
        clean_actor = cached_text(text_cache, actor);
        if (clean_actor == NULL) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
    }
    if (!PyLong_CheckExact(when) || !PyLong_CheckExact(trace_id) || !PyLong_CheckExact(span_id) ||
        !PyLong_CheckExact(duration))
        Py_RETURN_NONE;
    PyObject *rec = NULL, *attrs = NULL, *clean_attrs = NULL, *ms = NULL, *ids[2] = {NULL, NULL},
             *record_id = NULL;
    PyObject *id_objs[2] = {trace_id, span_id};
    for (int i = 0; i < 2; i++) {
        int nonzero = PyObject_IsTrue(id_objs[i]);
        if (nonzero < 0)
            goto error;
        ids[i] = !nonzero ? Py_NewRef(Py_None)
                 : i == 0 ? cached_hex(&trace_hex, id_objs[i], 16)
                          : cached_hex(&span_hex, id_objs[i], 8);
        if (ids[i] == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto fallback;
        }
    }
    ms = audit_ms(duration);
    if (ms == NULL)
        goto error;
    /* {method, status, duration_ms[, client.address]}: a copy of the template of those keys,
     * filled as the record below */
    int has_client = PyObject_IsTrue(client);
    if (has_client < 0)
        goto error;
    PyObject *attr_template = audit_attr_templates[has_client];
    attrs = PyDict_Copy(attr_template);
    if (attrs == NULL)
        goto error;
    PyObject *attr_values[4] = {PyTuple_GET_ITEM(p, 9), status, ms, client};
    PyObject **attr_slot[4];
    fill_slots(&audit_attr_fill[has_client], attr_template, attrs, audit_keys + A_METHOD, 3 + has_client,
               attr_slot);
    for (int i = 0; i < 3 + has_client; i++) {
        if (fill(attrs, attr_slot[i], audit_keys[A_METHOD + i], attr_values[i]) < 0)
            goto error;
    }
    clean_attrs = fast_attributes(attrs, args[3], text_cache, args[5], memo);
    if (clean_attrs == NULL) {
        if (PyErr_Occurred())
            goto error;
        goto fallback;
    }
    /* records.new_record_id(): 64 random bits as 16 hex digits, from the span-id generator
     * (reseeded in a forked child, so a child never repeats its parent's ids) */
    PyObject *bits = audit_random_id();
    if (bits == NULL)
        goto error;
    record_id = hex_id(bits, 8);
    Py_DECREF(bits);
    if (record_id == NULL) {
        if (PyErr_Occurred())
            goto error;
        goto fallback;
    }
    rec = PyDict_Copy(audit_template); /* sized for all its keys: no resize while filling */
    if (rec == NULL)
        goto error;
    /* (audit_keys[0..14) are the record's keys, in order) */
    PyObject *values[14] = {
        int_1,    audit_keys[A_AUDIT], record_id, clean[0], when,     ids[0],   ids[1],
        clean[1], clean[2],            clean_actor, clean[3], clean[4], clean[5], clean_attrs,
    };
    PyObject **slot[14];
    fill_slots(&audit_fill, audit_template, rec, audit_keys, 14, slot);
    for (int i = 0; i < 14; i++) {
        if (fill(rec, slot[i], audit_keys[i], values[i]) < 0)
            goto error;
    }
    if (PyObject_GC_IsTracked(clean_attrs))
        PyObject_GC_UnTrack(clean_attrs);
    if (PyObject_GC_IsTracked(rec))
        PyObject_GC_UnTrack(rec);
    goto done;
fallback:
    rec = Py_NewRef(Py_None);
    goto done;
error:
    Py_CLEAR(rec);
done:
    Py_XDECREF(ids[0]);
    Py_XDECREF(ids[1]);
    Py_XDECREF(record_id);
    Py_XDECREF(ms);
    Py_XDECREF(attrs);
    Py_XDECREF(clean_attrs);
    return rec;
}

/* build_audit_records(items, mark, service, environment, key_cache, text_cache, sql_cache,
 * max_attributes) -> (records, rest): build_audit_record() for each queued request audit
 * (a tuple whose first item is `mark`) it can build; everything else, in order, in rest. */
static PyObject *
build_audit_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "build_audit_records(items, mark, service, environment, "
                                         "key_cache, text_cache, sql_cache, max_attributes)");
        return NULL;
    }
    PyObject *items = args[0], *mark = args[1];
    PyObject *records = PyList_New(0), *rest = PyList_New(0);
    key_memo memo = {.n = 0}, texts = {.n = 0};
    if (records == NULL || rest == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i), *rec = NULL;
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 13) {
            int is_audit = PyObject_RichCompareBool(PyTuple_GET_ITEM(item, 0), mark, Py_EQ);
            if (is_audit < 0)
                goto error;
            if (is_audit) {
                PyObject *call[7] = {item, args[2], args[3], args[4], args[5], args[6], args[7]};
                rec = audit_record_memo(call, &memo, &texts);
                if (rec == NULL)
                    goto error;
            }
        }
        int rc;
        if (rec != NULL && rec != Py_None)
            rc = PyList_Append(records, rec);
        else
            rc = PyList_Append(rest, item);
        Py_XDECREF(rec);
        if (rc < 0)
            goto error;
    }
    key_memo_clear(&memo);
    key_memo_clear(&texts);
    return Py_BuildValue("(NN)", records, rest);
error:
    key_memo_clear(&memo);
    key_memo_clear(&texts);
    Py_XDECREF(records);
    Py_XDECREF(rest);
    return NULL;
}

/* untrack_records(records): untrack each record (a dict) whose values are all atomic (no
 * GC-tracked object), or dicts with atomic values only, as CPython's collector does by itself
 * for dicts of atomic values: records such as audit records wait in exporter queues, and
 * tracked ones were promoted to the oldest generation by the collections that ran meanwhile,
 * making full collections frequent. Inserting a container re-tracks a dict (a consumer that
 * stored a record inside its own attribute map would make a cycle the collector cannot see:
 * records are data to export, not a place for such references). */
static int
atomic_dict(PyObject *d)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (PyObject_GC_IsTracked(k) || PyObject_GC_IsTracked(v))
            return 0;
    }
    return 1;
}

static PyObject *
untrack_records(PyObject *module, PyObject *records)
{
    if (!PyList_CheckExact(records)) {
        PyErr_SetString(PyExc_TypeError, "untrack_records() takes a list");
        return NULL;
    }
    Py_ssize_t untracked = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        if (!PyDict_CheckExact(rec) || !PyObject_GC_IsTracked(rec))
            continue;
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        int ok = 1;
        while (ok && PyDict_Next(rec, &pos, &k, &v)) {
            if (PyObject_GC_IsTracked(k))
                ok = 0;
            else if (PyObject_GC_IsTracked(v))
                ok = PyDict_CheckExact(v) && atomic_dict(v);
        }
        if (!ok)
            continue;
        pos = 0;
        while (PyDict_Next(rec, &pos, &k, &v)) {
            if (PyObject_GC_IsTracked(v))
                PyObject_GC_UnTrack(v);
        }
        PyObject_GC_UnTrack(rec);
        untracked++;
    }
    return PyLong_FromSsize_t(untracked);
}

/* Whether span exits read a context token's previous value from its struct (for tests). */
static PyObject *
token_layout(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(token_layout_ok);
}

static PyMethodDef methods[] = {
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "Remember the Span class, its slot offsets and StatusCode.UNSET."},
    {"rollup_chunk", (PyCFunction)(void (*)(void))rollup_chunk, METH_FASTCALL,
     "Per (window, name, kind) summary of a chunk of spans for Rollups (see the comment)."},
    {"take_chunk", (PyCFunction)(void (*)(void))take_chunk, METH_FASTCALL,
     "Pop and sort a chunk of the pipeline queue (see the comment)."},
    {"install_tracer", (PyCFunction)(void (*)(void))install_tracer, METH_FASTCALL,
     "Make Tracer.start_span a C method (see the comment)."},
    {"install_methods", (PyCFunction)(void (*)(void))install_methods, METH_FASTCALL,
     "Install the C __enter__, __exit__ and set_attribute on the Span class."},
    {"build_audit_record", (PyCFunction)(void (*)(void))build_audit_record, METH_FASTCALL,
     "The sanitized audit record of a queued request audit, or None (see the comment)."},
    {"web_setup", (PyCFunction)(void (*)(void))web_setup, METH_FASTCALL,
     "Remember the middleware's RequestState class and helpers (see the comment)."},
    {"asgi_begin", (PyCFunction)(void (*)(void))asgi_begin, METH_FASTCALL,
     "Start an ASGI request's server span and state, or NotImplemented (see the comment)."},
    {"request_end", (PyCFunction)(void (*)(void))request_end, METH_FASTCALL,
     "request_finish() with the route resolved and the end time taken (see the comment)."},
    {"tail_offer", (PyCFunction)(void (*)(void))tail_offer, METH_FASTCALL,
     "TailKeeper.offer_many's common cases, in order (see the comment)."},
    {"build_audit_records", (PyCFunction)(void (*)(void))build_audit_records, METH_FASTCALL,
     "build_audit_record() over a chunk of queued items (see the comment)."},
    {"untrack_records", untrack_records, METH_O,
     "Untrack records made of atomic values and dicts of them (see the comment)."},
    {"build_span_records", (PyCFunction)(void (*)(void))build_span_records, METH_FASTCALL,
     "Sanitized span records of a chunk of spans (see the module comment)."},
    {"token_layout", token_layout, METH_NOARGS,
     "Whether span exits read context tokens' fields directly (checked by install_methods)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pitchey_trace._speedups", "Optional C accelerator.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
#ifndef _WIN32
    if (pthread_atfork(NULL, NULL, rng_forget) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return NULL;
    }
#endif
    if (intern_all(key_names, K_COUNT, keys) < 0 || intern_all(audit_key_names, A_COUNT, audit_keys) < 0)
        return NULL;
    struct { PyObject **slot; const char *text; } names[] = {
        {&s_hot, "_hot"}, {&s_enqueue, "enqueue"}, {&s_drop, "drop"},
        {&s_max_attributes, "max_attributes"}, {&s_on_exception, "_on_exception"},
        {&s_reset_failed, "_reset_failed"}, {&s_set_attribute_slow, "_set_attribute_slow"},
        {&s_reenter, "_reenter"}, {&s_py_exit, "_py_exit"}, {&s_py_set_attribute, "_py_set_attribute"},
        {&s_restore_live, "_restore_live"}, {&s_old_value, "old_value"},
        {&s_py_end, "_py_end"}, {&s_fast_state, "_fast_state"},
        {&s_py_start_span, "_py_start_span"}, {&s_attributes, "attributes"}, {&s_kind, "kind"},
        {&s_context, "context"}, {&s_links, "links"}, {&s_start_time_ns, "start_time_ns"},
        {&s_trace_id, "trace_id"}, {&s_span_id, "span_id"}, {&s_trace_flags, "trace_flags"},
        {&s_trace_state, "trace_state"}, {&s_baggage, "baggage"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL)
            return NULL;
    }
    int_1 = PyLong_FromLong(1);
    int_3 = PyLong_FromLong(3);
    audit_template = PyDict_New();
    float_round = PyObject_GetAttr((PyObject *)&PyFloat_Type, audit_keys[A_ROUND]);
    if (int_1 == NULL || int_3 == NULL || audit_template == NULL || float_round == NULL)
        return NULL;
    for (int i = A_SCHEMA; i <= A_ATTRIBUTES; i++) {
        if (PyDict_SetItem(audit_template, audit_keys[i], Py_None) < 0)
            return NULL;
    }
    for (int t = 0; t < 2; t++) {
        if ((audit_attr_templates[t] = PyDict_New()) == NULL)
            return NULL;
        for (int i = A_METHOD; i <= A_DURATION + t; i++) {
            if (PyDict_SetItem(audit_attr_templates[t], audit_keys[i], Py_None) < 0)
                return NULL;
        }
    }
    struct { PyObject **slot; const char *text; } send_names[] = {
        {&s_type_key, "type"}, {&s_body, "body"}, {&s_more_body, "more_body"},
        {&s_status_key, "status"}, {&s_headers_key, "headers"},
        {&s_resp_body, "http.response.body"}, {&s_resp_start, "http.response.start"},
    };
    for (size_t i = 0; i < sizeof(send_names) / sizeof(send_names[0]); i++) {
        *send_names[i].slot = PyUnicode_InternFromString(send_names[i].text);
        if (*send_names[i].slot == NULL)
            return NULL;
    }
    if (PyType_Ready(&SenderType) < 0)
        return NULL;
    s_spans_attr = PyUnicode_InternFromString("spans");
    if (s_spans_attr == NULL)
        return NULL;
    int_64 = PyLong_FromLong(64);
    int_128 = PyLong_FromLong(128);
    empty_tuple = PyTuple_New(0);
    if (int_64 == NULL || int_128 == NULL || empty_tuple == NULL)
        return NULL;
    static const char *cats[4] = {"fast", "normal", "slow", "very_slow"};
    for (int i = 0; i < 4; i++) {
        cat_names[i] = PyUnicode_InternFromString(cats[i]);
        if (cat_names[i] == NULL)
            return NULL;
    }
    return PyModule_Create(&module_def);
}
