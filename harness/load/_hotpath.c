/* The driver's hot path in C: the accelerated twin of harness/load/hotpath.py.
 *
 * One call per response: httptools calls ConnCore.on_message_complete, which records the
 * latency into the driver's per-second histogram and outcome counts, appends the JTL row,
 * and in the common closed-model case writes the user's next request itself. Every other
 * case calls back into the Python driver (user_next, after, fail, next_request), exactly as
 * hotpath.py does; keep the two in step (tests run the same loads through both).
 * Built when a C compiler is at hand (setup.py, optional=True); else hotpath.py serves.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define HIST_SIZE 8192   /* bucket index of the largest 64-bit microsecond value is below this */
#define N_OUTCOMES 7     /* hotpath.OUTCOMES: ok 4xx 5xx timeout connect-refused connection-reset other */
#define OK 0
#define C4XX 1
#define C5XX 2
#define RESET 5

static PyObject *s_get_status_code, *s_should_keep_alive, *s_close, *s_write, *s_next_request,
    *s_user_next, *s_after, *s_fail, *s_answered;

/* ------------------------------------------------------------------ perf counter */

static inline double perf_now(void) {
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_PerfCounterRaw(&t);
    return PyTime_AsSecondsDouble(t);
#else
    return _PyTime_AsSecondsDouble(_PyTime_GetPerfCounter());
#endif
}

/* histogram.bucket_of */
static inline Py_ssize_t bucket_of(long long us) {
    if (us < 256) return us > 0 ? (Py_ssize_t)us : 0;
    int shift = (64 - __builtin_clzll((unsigned long long)us)) - 8;
    return ((Py_ssize_t)shift << 7) + (Py_ssize_t)(us >> shift);
}

/* ------------------------------------------------------------------ DriverCore */

typedef struct {
    PyObject_HEAD
    long long inflight, sent, max_us, loops;
    char dispatch_over, eager, mixed;
    PyObject *requests;   /* list of bytes */
    PyObject *jtl_rows;   /* list, or None */
    Py_ssize_t n_requests;
    unsigned long long hist[HIST_SIZE];
    unsigned long long *counts;  /* counts[outcome * n_requests + request] */
} DriverCore;

static int DriverCore_init(DriverCore *self, PyObject *args, PyObject *kw) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return -1;
    if (n < 1) { PyErr_SetString(PyExc_ValueError, "a driver needs at least one request"); return -1; }
    PyMem_Free(self->counts);
    self->counts = PyMem_Calloc((size_t)(N_OUTCOMES * n), sizeof(unsigned long long));
    if (!self->counts) { PyErr_NoMemory(); return -1; }
    self->n_requests = n;
    memset(self->hist, 0, sizeof self->hist);
    self->sent = self->max_us = 0;
    Py_XSETREF(self->requests, PyList_New(0));
    Py_XSETREF(self->jtl_rows, Py_NewRef(Py_None));
    return self->requests ? 0 : -1;
}

static int DriverCore_traverse(DriverCore *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->requests);
    Py_VISIT(self->jtl_rows);
    return 0;
}

static int DriverCore_clear(DriverCore *self) {
    Py_CLEAR(self->requests);
    Py_CLEAR(self->jtl_rows);
    return 0;
}

static void DriverCore_dealloc(DriverCore *self) {
    PyObject_GC_UnTrack(self);
    DriverCore_clear(self);
    PyMem_Free(self->counts);
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static inline int tally_ok(DriverCore *d, long kind, Py_ssize_t ri) {
    if (kind < 0 || kind >= N_OUTCOMES || ri < 0 || ri >= d->n_requests) {
        PyErr_Format(PyExc_IndexError, "no outcome %ld for request %zd", kind, ri);
        return 0;
    }
    return 1;
}

static PyObject *DriverCore_tally(DriverCore *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "tally(kind, request)"); return NULL; }
    long kind = PyLong_AsLong(args[0]);
    Py_ssize_t ri = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred() || !tally_ok(self, kind, ri)) return NULL;
    self->counts[kind * self->n_requests + ri]++;
    Py_RETURN_NONE;
}

/* take() -> (sent, [(bucket, count), ...], max_us, counts[outcome][request]); starts a new second */
static PyObject *DriverCore_take(DriverCore *self, PyObject *unused) {
    PyObject *pairs = PyList_New(0), *counts = PyList_New(N_OUTCOMES), *out = NULL;
    if (!pairs || !counts) goto done;
    for (Py_ssize_t b = 0; b < HIST_SIZE; b++) {
        if (!self->hist[b]) continue;
        PyObject *pair = Py_BuildValue("(nK)", b, self->hist[b]);
        if (!pair || PyList_Append(pairs, pair) < 0) { Py_XDECREF(pair); goto done; }
        Py_DECREF(pair);
    }
    for (int k = 0; k < N_OUTCOMES; k++) {
        PyObject *row = PyList_New(self->n_requests);
        if (!row) goto done;
        PyList_SET_ITEM(counts, k, row);
        for (Py_ssize_t r = 0; r < self->n_requests; r++) {
            PyObject *n = PyLong_FromUnsignedLongLong(self->counts[k * self->n_requests + r]);
            if (!n) goto done;
            PyList_SET_ITEM(row, r, n);
        }
    }
    out = Py_BuildValue("(LOLO)", self->sent, pairs, self->max_us, counts);
    if (out) {
        memset(self->hist, 0, sizeof self->hist);
        memset(self->counts, 0, sizeof(unsigned long long) * N_OUTCOMES * self->n_requests);
        self->sent = self->max_us = 0;
    }
done:
    Py_XDECREF(pairs);
    Py_XDECREF(counts);
    return out;
}

static PyMemberDef DriverCore_members[] = {
    {"inflight", T_LONGLONG, offsetof(DriverCore, inflight), 0, "requests sent and not yet answered"},
    {"sent", T_LONGLONG, offsetof(DriverCore, sent), 0, "requests sent this second"},
    {"loops", T_LONGLONG, offsetof(DriverCore, loops), 0, "requests per closed user (0: until the end)"},
    {"dispatch_over", T_BOOL, offsetof(DriverCore, dispatch_over), 0, "no new sends"},
    {"eager", T_BOOL, offsetof(DriverCore, eager), 0, "closed users send again as soon as a response completes"},
    {"mixed", T_BOOL, offsetof(DriverCore, mixed), 0, "more than one request in the mix"},
    {"requests", T_OBJECT_EX, offsetof(DriverCore, requests), 0, "each request's bytes"},
    {"jtl_rows", T_OBJECT_EX, offsetof(DriverCore, jtl_rows), 0, "a list collecting JTL rows, or None"},
    {NULL},
};

static PyMethodDef DriverCore_methods[] = {
    {"tally", (PyCFunction)(void (*)(void))DriverCore_tally, METH_FASTCALL, "Count one outcome of one request."},
    {"take", (PyCFunction)DriverCore_take, METH_NOARGS, "This second's (sent, histogram pairs, max_us, counts); resets them."},
    {NULL},
};

static PyType_Slot DriverCore_slots[] = {
    {Py_tp_doc, "The per-second tallies and the flags the hot path reads."},
    {Py_tp_init, DriverCore_init},
    {Py_tp_traverse, DriverCore_traverse},
    {Py_tp_clear, DriverCore_clear},
    {Py_tp_dealloc, DriverCore_dealloc},
    {Py_tp_members, DriverCore_members},
    {Py_tp_methods, DriverCore_methods},
    {0, NULL},
};

static PyType_Spec DriverCore_spec = {
    "harness.load._hotpath.DriverCore", sizeof(DriverCore), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, DriverCore_slots,
};

/* ------------------------------------------------------------------ User */

typedef struct {
    PyObject_HEAD
    PyObject *conn;
    long long done, index;
} User;

static PyTypeObject *UserType, *DriverCoreType;

static int User_init(User *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"index", NULL};
    self->index = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|L", names, &self->index)) return -1;
    self->done = 0;
    Py_XSETREF(self->conn, Py_NewRef(Py_None));
    return 0;
}

static int User_traverse(User *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->conn);
    return 0;
}

static int User_clear(User *self) {
    Py_CLEAR(self->conn);
    return 0;
}

static void User_dealloc(User *self) {
    PyObject_GC_UnTrack(self);
    User_clear(self);
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMemberDef User_members[] = {
    {"conn", T_OBJECT_EX, offsetof(User, conn), 0, "the user's keep-alive connection, or None"},
    {"done", T_LONGLONG, offsetof(User, done), 0, "requests finished"},
    {"index", T_LONGLONG, offsetof(User, index), 0, "JMeter's thread number"},
    {NULL},
};

static PyType_Slot User_slots[] = {
    {Py_tp_doc, "A closed-model user (JMeter thread)."},
    {Py_tp_init, User_init},
    {Py_tp_traverse, User_traverse},
    {Py_tp_clear, User_clear},
    {Py_tp_dealloc, User_dealloc},
    {Py_tp_members, User_members},
    {0, NULL},
};

static PyType_Spec User_spec = {
    "harness.load._hotpath.User", sizeof(User), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, User_slots,
};

/* ------------------------------------------------------------------ ConnCore */

typedef struct {
    PyObject_HEAD
    PyObject *d, *owner, *transport, *parser;
    PyObject *write, *status_code, *keep_alive;  /* bound methods, taken when transport / parser are set */
    char busy, closed;
    double t_start, t_sent;
    long long ri, thread;
} ConnCore;

static int ConnCore_init(ConnCore *self, PyObject *args, PyObject *kw) {
    PyObject *d, *owner;
    if (!PyArg_ParseTuple(args, "O!O", DriverCoreType, &d, &owner)) return -1;
    if (owner != Py_None && !Py_IS_TYPE(owner, UserType)) {
        PyErr_SetString(PyExc_TypeError, "a connection's owner is a User or None");
        return -1;
    }
    Py_XSETREF(self->d, Py_NewRef(d));
    Py_XSETREF(self->owner, Py_NewRef(owner));
    self->thread = owner == Py_None ? 0 : ((User *)owner)->index;
    self->busy = self->closed = 0;
    self->t_start = self->t_sent = 0.0;
    self->ri = 0;
    return 0;
}

static int ConnCore_traverse(ConnCore *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->d);
    Py_VISIT(self->owner);
    Py_VISIT(self->transport);
    Py_VISIT(self->parser);
    Py_VISIT(self->write);
    Py_VISIT(self->status_code);
    Py_VISIT(self->keep_alive);
    return 0;
}

static int ConnCore_clear(ConnCore *self) {
    Py_CLEAR(self->d);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->parser);
    Py_CLEAR(self->write);
    Py_CLEAR(self->status_code);
    Py_CLEAR(self->keep_alive);
    return 0;
}

static void ConnCore_dealloc(ConnCore *self) {
    PyObject_GC_UnTrack(self);
    ConnCore_clear(self);
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* self.d.<name>(a, b[, c]): the Python driver takes every case but the common one */
static PyObject *call_driver(ConnCore *self, PyObject *name, PyObject *a, PyObject *b, PyObject *c) {
    PyObject *args[] = {self->d, a, b, c};
    return PyObject_VectorcallMethod(name, args, (c ? 4 : 3) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *ConnCore_on_message_complete(ConnCore *self, PyObject *unused) {
    if (!self->busy) Py_RETURN_NONE;
    double now = perf_now();
    DriverCore *d = (DriverCore *)self->d;
    long long us = (long long)((now - self->t_start) * 1e6);
    d->hist[bucket_of(us)]++;
    if (us > d->max_us) d->max_us = us;

    if (!self->status_code || !self->write) {
        PyErr_SetString(PyExc_RuntimeError, "a response before the connection had its parser and transport");
        return NULL;
    }
    PyObject *r = PyObject_CallNoArgs(self->status_code);
    if (!r) return NULL;
    long status = PyLong_AsLong(r);
    Py_DECREF(r);
    if (status == -1 && PyErr_Occurred()) return NULL;
    int kind = status < 400 ? OK : status < 500 ? C4XX : C5XX;
    if (!tally_ok(d, kind, (Py_ssize_t)self->ri)) return NULL;
    d->counts[kind * d->n_requests + self->ri]++;
    if (kind != OK) {  /* self.d.answered(status, ri): which status, for which request */
        PyObject *st = PyLong_FromLong(status), *ri = PyLong_FromLongLong(self->ri);
        r = st && ri ? call_driver(self, s_answered, st, ri, NULL) : NULL;
        Py_XDECREF(st);
        Py_XDECREF(ri);
        if (!r) return NULL;
        Py_DECREF(r);
    }
    if (d->jtl_rows != Py_None) {
        PyObject *row = Py_BuildValue("(dLLlL)", self->t_start, us, self->ri, status, self->thread);
        if (!row || PyList_Append(d->jtl_rows, row) < 0) { Py_XDECREF(row); return NULL; }
        Py_DECREF(row);
    }
    r = PyObject_CallNoArgs(self->keep_alive);
    if (!r) return NULL;
    int keep = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (keep < 0) return NULL;
    if (!keep) {
        self->closed = 1;
        r = PyObject_CallMethodNoArgs(self->transport, s_close);
        if (!r) return NULL;
        Py_DECREF(r);
    }

    PyObject *owner = self->owner;
    int user_goes_on = owner != Py_None && !d->dispatch_over;
    if (user_goes_on) {
        User *user = (User *)owner;
        user->done++;
        if (user->done != d->loops && d->eager && !self->closed) {
            /* the common case: the same user sends its next request on this connection at once */
            long long ri = 0;
            if (d->mixed) {
                r = PyObject_CallMethodNoArgs(self->d, s_next_request);
                if (!r) return NULL;
                ri = PyLong_AsLongLong(r);
                Py_DECREF(r);
                if (ri == -1 && PyErr_Occurred()) return NULL;
            }
            if (ri < 0 || ri >= PyList_GET_SIZE(d->requests)) {
                PyErr_Format(PyExc_IndexError, "no request %lld", ri);
                return NULL;
            }
            d->sent++;
            self->ri = ri;
            self->t_start = self->t_sent = now;
            r = PyObject_CallOneArg(self->write, PyList_GET_ITEM(d->requests, ri));
            if (r) { Py_DECREF(r); Py_RETURN_NONE; }
            /* uvloop: the peer closed it and connection_lost is still queued */
            if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) return NULL;
            PyErr_Clear();
            PyObject *kind_reset = PyLong_FromLong(RESET);
            if (!kind_reset) return NULL;
            r = call_driver(self, s_fail, (PyObject *)self, kind_reset, NULL);
            Py_DECREF(kind_reset);
            if (!r) return NULL;
            Py_DECREF(r);
            Py_RETURN_NONE;
        }
    }
    self->busy = 0;
    d->inflight--;
    PyObject *t = PyFloat_FromDouble(now);
    if (!t) return NULL;
    r = user_goes_on ? call_driver(self, s_user_next, owner, t, NULL)
                     : call_driver(self, s_after, (PyObject *)self, owner, t);
    Py_DECREF(t);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyMemberDef ConnCore_members[] = {
    {"d", T_OBJECT_EX, offsetof(ConnCore, d), READONLY, "the driver"},
    {"owner", T_OBJECT_EX, offsetof(ConnCore, owner), READONLY, "the closed-model user, or None (open model)"},
    {"busy", T_BOOL, offsetof(ConnCore, busy), 0, "a request is out and unanswered"},
    {"closed", T_BOOL, offsetof(ConnCore, closed), 0, "closed or closing"},
    {"t_start", T_DOUBLE, offsetof(ConnCore, t_start), 0, "when the latency clock started (perf_counter)"},
    {"t_sent", T_DOUBLE, offsetof(ConnCore, t_sent), 0, "when the request was written (perf_counter)"},
    {"ri", T_LONGLONG, offsetof(ConnCore, ri), 0, "which request of the mix is out"},
    {"thread", T_LONGLONG, offsetof(ConnCore, thread), READONLY, "JMeter's thread number (0: open model)"},
    {NULL},
};

static PyObject *get_object(PyObject *o) { return Py_NewRef(o ? o : Py_None); }

/* setting the transport / the parser also takes the bound methods the hot path calls */
static int set_with_methods(PyObject **slot, PyObject *value, PyObject *name1, PyObject **m1,
                            PyObject *name2, PyObject **m2) {
    PyObject *a = NULL, *b = NULL;
    if (value && value != Py_None) {
        if (!(a = PyObject_GetAttr(value, name1))) return -1;
        if (name2 && !(b = PyObject_GetAttr(value, name2))) { Py_DECREF(a); return -1; }
    }
    Py_XSETREF(*slot, value ? Py_NewRef(value) : NULL);
    Py_XSETREF(*m1, a);
    if (m2) Py_XSETREF(*m2, b);
    return 0;
}

static PyObject *get_transport(ConnCore *self, void *c) { return get_object(self->transport); }
static PyObject *get_parser(ConnCore *self, void *c) { return get_object(self->parser); }
static int set_transport(ConnCore *self, PyObject *v, void *c) {
    return set_with_methods(&self->transport, v, s_write, &self->write, NULL, NULL);
}
static int set_parser(ConnCore *self, PyObject *v, void *c) {
    return set_with_methods(&self->parser, v, s_get_status_code, &self->status_code, s_should_keep_alive, &self->keep_alive);
}

static PyGetSetDef ConnCore_getset[] = {
    {"transport", (getter)get_transport, (setter)set_transport, "the connection's transport, once made", NULL},
    {"parser", (getter)get_parser, (setter)set_parser, "the httptools response parser", NULL},
    {NULL},
};

static PyMethodDef ConnCore_methods[] = {
    {"on_message_complete", (PyCFunction)ConnCore_on_message_complete, METH_NOARGS,
     "Record the response; send the user's next request when it can go at once."},
    {NULL},
};

static PyType_Slot ConnCore_slots[] = {
    {Py_tp_doc, "One keep-alive connection's state and its response callback."},
    {Py_tp_init, ConnCore_init},
    {Py_tp_traverse, ConnCore_traverse},
    {Py_tp_clear, ConnCore_clear},
    {Py_tp_dealloc, ConnCore_dealloc},
    {Py_tp_members, ConnCore_members},
    {Py_tp_methods, ConnCore_methods},
    {Py_tp_getset, ConnCore_getset},
    {0, NULL},
};

static PyType_Spec ConnCore_spec = {
    "harness.load._hotpath.ConnCore", sizeof(ConnCore), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, ConnCore_slots,
};

/* ------------------------------------------------------------------ module */

static PyObject *py_bucket_of(PyObject *m, PyObject *arg) {
    long long us = PyLong_AsLongLong(arg);
    if (us == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(bucket_of(us));
}

static PyMethodDef module_methods[] = {
    {"bucket_of", py_bucket_of, METH_O, "histogram.bucket_of as the hot path computes it (for tests)."},
    {NULL},
};

static int add_type(PyObject *m, PyType_Spec *spec, PyTypeObject **out) {
    PyObject *t = PyType_FromSpec(spec);
    if (!t) return -1;
    if (PyModule_AddObjectRef(m, strrchr(spec->name, '.') + 1, t) < 0) { Py_DECREF(t); return -1; }
    if (out) *out = (PyTypeObject *)t;  /* the module keeps it alive */
    Py_DECREF(t);
    return 0;
}

static int exec_module(PyObject *m) {
#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return -1
    INTERN(s_get_status_code, "get_status_code");
    INTERN(s_should_keep_alive, "should_keep_alive");
    INTERN(s_close, "close");
    INTERN(s_write, "write");
    INTERN(s_next_request, "next_request");
    INTERN(s_user_next, "user_next");
    INTERN(s_after, "after");
    INTERN(s_fail, "fail");
    INTERN(s_answered, "answered");
#undef INTERN
    if (add_type(m, &DriverCore_spec, &DriverCoreType) < 0 || add_type(m, &User_spec, &UserType) < 0
        || add_type(m, &ConnCore_spec, NULL) < 0)
        return -1;
    PyObject *outcomes = Py_BuildValue("(sssssss)", "ok", "4xx", "5xx", "timeout", "connect-refused",
                                       "connection-reset", "other");
    if (!outcomes || PyModule_AddObjectRef(m, "OUTCOMES", outcomes) < 0) { Py_XDECREF(outcomes); return -1; }
    Py_DECREF(outcomes);
    return PyModule_AddIntConstant(m, "HIST_SIZE", HIST_SIZE);
}

static PyModuleDef_Slot module_slots[] = {{Py_mod_exec, exec_module}, {0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "harness.load._hotpath",
    "The driver's hot path in C (see harness/load/hotpath.py, its pure-Python twin).", 0, module_methods,
    module_slots,
};

PyMODINIT_FUNC PyInit__hotpath(void) { return PyModuleDef_Init(&module); }
