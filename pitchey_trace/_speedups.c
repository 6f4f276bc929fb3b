/* Optional C accelerator for the export worker (pitchey_trace._speedups).
 *
 * One function, build_span_records(), turns a chunk of finished spans into their sanitized
 * schema-v1 records: exactly what Sanitizer._span_record() returns, for the common case
 * (no events, no links, no status message, every attribute key already decided by the
 * sanitizer and every value a cached string, a small int, a bool, a float or None). Any other
 * span is handed to the Python builder given as `slow`, so the two paths can never disagree
 * on anything but speed: the Python one is the reference, and the tests compare them.
 *
 * new_span() is the request thread's part: it creates a Span and sets its 18 slots in one call
 * (the Python code does one attribute store per slot).
 *
 * Span attributes are read through the slot offsets of the Span class (looked up once by
 * setup()), so the type must be exactly that class. Nothing here is required: without a C
 * compiler the package runs on the pure-Python builder.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

enum {
    F_TRACE_ID, F_SPAN_ID, F_PARENT, F_NAME, F_KIND, F_START, F_END, F_STATUS, F_MESSAGE,
    F_ATTRS, F_EVENTS, F_LINKS, F_FLAGS, F_STATE, F_BAGGAGE, F_LOCAL_ROOT, F_PIPE, F_TOKEN,
    F_COUNT
};
static const char *slot_names[F_COUNT] = {
    "trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns", "status",
    "status_message", "attributes", "events", "links", "trace_flags", "trace_state", "baggage",
    "local_root", "_pipe", "_token",
};
static PyObject *status_unset = NULL; /* StatusCode.UNSET */
static Py_ssize_t slot_offset[F_COUNT];
static PyTypeObject *span_type = NULL;

/* Interned record keys. */
enum {
    K_TRACE_ID, K_SPAN_ID, K_PARENT, K_NAME, K_KIND, K_START, K_END, K_DURATION, K_STATUS,
    K_CATEGORY, K_ATTRIBUTES, K_EVENTS, K_LINKS, K_COUNT
};
static const char *key_names[K_COUNT] = {
    "trace_id", "span_id", "parent_span_id", "name", "kind", "start_time_unix_nano",
    "end_time_unix_nano", "duration_ms", "status", "category", "attributes", "events", "links",
};
static PyObject *keys[K_COUNT];
static PyObject *cat_names[4]; /* fast, normal, slow, very_slow */
/* Ints from here up (sanitize._CARD_MIN) are checked for card numbers by the Python builder. */
#define CARD_MIN 1000000000000LL

#define SLOT(obj, f) (*(PyObject **)((char *)(obj) + slot_offset[f]))

static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "setup() takes the Span class and StatusCode.UNSET");
        return NULL;
    }
    PyObject *cls = args[0];
    PyObject *dict = ((PyTypeObject *)cls)->tp_dict;
    for (int i = 0; i < F_COUNT; i++) {
        PyObject *descr = PyDict_GetItemString(dict, slot_names[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "Span has no slot %s", slot_names[i]);
            return NULL;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "Span.%s is not an object slot", slot_names[i]);
            return NULL;
        }
        slot_offset[i] = member->offset;
    }
    Py_INCREF(cls);
    Py_XSETREF(span_type, (PyTypeObject *)cls);
    Py_INCREF(args[1]);
    Py_XSETREF(status_unset, args[1]);
    Py_RETURN_NONE;
}

/* A new Span with every slot set, as Tracer.start_span does in Python (object.__new__, then
 * one assignment per slot): name, kind, trace_id, span_id, parent_span_id, trace_flags,
 * trace_state, baggage, attributes, start_ns, local_root, pipe. */
static PyObject *
new_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const int order[12] = {
        F_NAME, F_KIND, F_TRACE_ID, F_SPAN_ID, F_PARENT, F_FLAGS, F_STATE, F_BAGGAGE, F_ATTRS,
        F_START, F_LOCAL_ROOT, F_PIPE,
    };
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "new_span() takes 12 arguments");
        return NULL;
    }
    if (span_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup() was not called");
        return NULL;
    }
    PyObject *span = span_type->tp_alloc(span_type, 0);
    if (span == NULL)
        return NULL;
    for (int i = 0; i < 12; i++)
        SLOT(span, order[i]) = Py_NewRef(args[i]);
    SLOT(span, F_END) = PyLong_FromLong(0);
    SLOT(span, F_STATUS) = Py_NewRef(status_unset);
    SLOT(span, F_MESSAGE) = Py_NewRef(Py_None);
    SLOT(span, F_EVENTS) = Py_NewRef(Py_None);
    SLOT(span, F_LINKS) = Py_NewRef(Py_None);
    SLOT(span, F_TOKEN) = Py_NewRef(Py_None);
    return span;
}

/* Lowercase hex of a non-negative int below 2**(8*nbytes), as int.to_bytes(nbytes).hex()
 * gives; NULL with no error set for any other value (the Python builder then decides). */
static PyObject *
hex_id(PyObject *value, int nbytes)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char buf[16];
    if (_PyLong_Sign(value) < 0 || _PyLong_NumBits(value) > (size_t)nbytes * 8)
        return NULL;
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
    for (int i = 0; i < nbytes; i++) {
        *p++ = digits[buf[i] >> 4];
        *p++ = digits[buf[i] & 0xF];
    }
    return out;
}

/* Sanitized attributes for the fast path, or NULL with no error set when a value needs the
 * Python builder (NULL with an error set on a real failure). */
static PyObject *
fast_attributes(PyObject *attrs, PyObject *key_cache, PyObject *text_cache, PyObject *sql_cache)
{
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attrs, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            goto slow;
        PyObject *entry = PyDict_GetItemWithError(key_cache, key);
        if (entry == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto slow;
        }
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3)
            goto slow;
        PyObject *new_key = PyTuple_GET_ITEM(entry, 0);
        PyObject *action_obj = PyTuple_GET_ITEM(entry, 1);
        if (!PyLong_CheckExact(action_obj))
            goto slow;
        long action = PyLong_AsLong(action_obj);
        if (action == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            goto slow;
        }
        PyObject *result = NULL; /* borrowed */
        PyTypeObject *type = Py_TYPE(value);
        if (action == 0) { /* _PASS */
            if (type == &PyUnicode_Type) {
                result = PyDict_GetItemWithError(text_cache, value);
                if (result == NULL) {
                    if (PyErr_Occurred())
                        goto error;
                    goto slow;
                }
            }
            else if (type == &PyLong_Type) {
                int overflow = 0;
                long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
                if (v == -1 && !overflow && PyErr_Occurred())
                    goto error;
                if (overflow > 0 || (!overflow && v >= CARD_MIN))
                    goto slow; /* may be a card number: the Python builder checks */
                result = value;
            }
            else if (type == &PyBool_Type || type == &PyFloat_Type || value == Py_None) {
                result = value;
            }
            else
                goto slow;
        }
        else if (action == 3 && type == &PyUnicode_Type) { /* _SQL */
            result = PyDict_GetItemWithError(sql_cache, value);
            if (result == NULL) {
                if (PyErr_Occurred())
                    goto error;
                goto slow;
            }
        }
        else
            goto slow;
        if (PyDict_SetItem(out, new_key, result) < 0)
            goto error;
    }
    return out;
slow:
    Py_DECREF(out);
    return NULL;
error:
    Py_DECREF(out);
    return NULL;
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

static int
set_new(PyObject *rec, int k, PyObject *value)
{
    if (value == NULL)
        return -1;
    int rc = PyDict_SetItem(rec, keys[k], value);
    Py_DECREF(value);
    return rc;
}

/* The record of one span, or NULL with no error when the span needs the Python builder. */
static PyObject *
fast_record(PyObject *span, PyObject *template, PyObject *table, PyObject *kind_str,
            PyObject *status_str, PyObject *key_cache, PyObject *text_cache, PyObject *sql_cache,
            Py_ssize_t max_attributes, small_cache *kinds, small_cache *statuses,
            small_cache *thresholds)
{
    if (Py_TYPE(span) != span_type)
        return NULL;
    for (int i = 0; i < F_COUNT; i++)
        if (SLOT(span, i) == NULL)
            return NULL;
    if (SLOT(span, F_EVENTS) != Py_None || SLOT(span, F_LINKS) != Py_None ||
        SLOT(span, F_MESSAGE) != Py_None)
        return NULL;
    PyObject *name = SLOT(span, F_NAME);
    if (!PyUnicode_CheckExact(name))
        return NULL;
    PyObject *sname = PyDict_GetItemWithError(text_cache, name);
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
    if (PyDict_GET_SIZE(attrs)) {
        new_attrs = fast_attributes(attrs, key_cache, text_cache, sql_cache);
        if (new_attrs == NULL)
            return NULL;
    }
    else {
        new_attrs = PyDict_New();
        if (new_attrs == NULL)
            return NULL;
    }
    if (end < start)
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
    /* hex_id() returning NULL without an error sends the span to the Python builder. */
    if (set_new(rec, K_TRACE_ID, hex_id(SLOT(span, F_TRACE_ID), 16)) < 0 ||
        set_new(rec, K_SPAN_ID, hex_id(SLOT(span, F_SPAN_ID), 8)) < 0)
        goto error;
    int has_parent = PyObject_IsTrue(parent);
    if (has_parent < 0)
        goto error;
    if (has_parent && set_new(rec, K_PARENT, hex_id(parent, 8)) < 0)
        goto error;
    if (PyDict_SetItem(rec, keys[K_NAME], sname) < 0 || PyDict_SetItem(rec, keys[K_KIND], kind) < 0 ||
        set_new(rec, K_START, PyLong_FromLongLong(start)) < 0 ||
        set_new(rec, K_END, PyLong_FromLongLong(end)) < 0 ||
        set_new(rec, K_DURATION, PyFloat_FromDouble(duration_ms)) < 0 ||
        PyDict_SetItem(rec, keys[K_STATUS], status) < 0 ||
        PyDict_SetItem(rec, keys[K_CATEGORY], cat_names[category]) < 0 ||
        PyDict_SetItem(rec, keys[K_ATTRIBUTES], new_attrs) < 0 ||
        set_new(rec, K_EVENTS, PyList_New(0)) < 0 || set_new(rec, K_LINKS, PyList_New(0)) < 0)
        goto error;
    Py_DECREF(new_attrs);
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
    if (!PyList_CheckExact(spans) || !PyDict_CheckExact(template) || !PyDict_CheckExact(table) ||
        !PyDict_CheckExact(kind_str) || !PyDict_CheckExact(status_str) ||
        !PyDict_CheckExact(key_cache) || !PyDict_CheckExact(text_cache) ||
        !PyDict_CheckExact(sql_cache)) {
        PyErr_SetString(PyExc_TypeError, "build_span_records(): unexpected argument types");
        return NULL;
    }
    small_cache kinds = {.n = 0}, statuses = {.n = 0}, thresholds = {.n = 0};
    Py_ssize_t n = PyList_GET_SIZE(spans);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        Py_INCREF(span);
        PyObject *rec = fast_record(span, template, table, kind_str, status_str, key_cache,
                                    text_cache, sql_cache, max_attributes, &kinds, &statuses,
                                    &thresholds);
        if (rec == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(span);
                Py_DECREF(out);
                return NULL;
            }
            /* The Python builder may fill the caches: forget borrowed lookups. */
            kinds.n = statuses.n = thresholds.n = 0;
            rec = PyObject_CallOneArg(slow, span);
            if (rec == NULL) {
                Py_DECREF(span);
                Py_DECREF(out);
                return NULL;
            }
        }
        Py_DECREF(span);
        int rc = PyList_Append(out, rec);
        Py_DECREF(rec);
        if (rc < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static PyMethodDef methods[] = {
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "Remember the Span class, its slot offsets and StatusCode.UNSET."},
    {"new_span", (PyCFunction)(void (*)(void))new_span, METH_FASTCALL,
     "A new Span with every slot set (see the function comment)."},
    {"build_span_records", (PyCFunction)(void (*)(void))build_span_records, METH_FASTCALL,
     "Sanitized span records of a chunk of spans (see the module comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pitchey_trace._speedups", "Optional C accelerator.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    for (int i = 0; i < K_COUNT; i++) {
        keys[i] = PyUnicode_InternFromString(key_names[i]);
        if (keys[i] == NULL)
            return NULL;
    }
    static const char *cats[4] = {"fast", "normal", "slow", "very_slow"};
    for (int i = 0; i < 4; i++) {
        cat_names[i] = PyUnicode_InternFromString(cats[i]);
        if (cat_names[i] == NULL)
            return NULL;
    }
    return PyModule_Create(&module_def);
}
