// The compilerd playground page. Two transports, both the Go playground's:
// - "socket": a WebSocket to /socket; {"Id","Kind":"run","Body"} out, then "stdout"/"stderr"
//   messages while the program runs and one "end" (empty Body on success);
// - "http": POST /compile, form-encoded as the Go playground's page sends it
//   (version=2&body=...), answered with Events replayed at the pace of their Delays;
// - "piston": Piston's WebSocket /api/v2/connect in the language picked, with the input box:
//   each line typed goes to the program's stdin while it runs, EOF ends its stdin, Stop sends
//   SIGKILL.
// <body data-state> is "running" during a run and "done" after it, for people and tests alike.
// As on the Go playground's page: output that starts with "IMAGE:" is a base64 PNG shown as an
// image, a form feed clears the output (what follows the last one stays), and the end of a run
// says how its build, vet and tests went. The language comes from GET /languages; a language
// other than the default one runs over POST /compile?lang=NAME (the socket runs the default).
'use strict';

(function () {
  var code = document.getElementById('code');
  var runButton = document.getElementById('run');
  var killButton = document.getElementById('kill');
  var transportSelect = document.getElementById('transport');
  var langSelect = document.getElementById('lang');
  var langLabel = document.getElementById('lang-label');
  var vetBox = document.getElementById('vet');
  var output = document.getElementById('output');
  var status = document.getElementById('status');
  var inputForm = document.getElementById('input');
  var stdinBox = document.getElementById('stdin');
  var sendButton = document.getElementById('send');
  var eofButton = document.getElementById('eof');

  // A first program per language, shown when the editor still holds another language's.
  var SAMPLES = {
    go: 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("Hello, 世界")\n}\n',
    python: 'print("Hello from compilerd")\n',
    c: '#include <stdio.h>\n\nint main(void) {\n\tputs("Hello from compilerd");\n\treturn 0;\n}\n',
  };
  var defaultLanguage = '';

  var OUTPUT_TOO_LARGE = 'Program output too large.';
  var TOOK_TOO_LONG = 'process took too long';

  // The run being shown; a newer run replaces it and its late messages are ignored.
  var current = null;

  function write(kind, text) {
    if (kind === 'stdout' && text.indexOf('IMAGE:') === 0) {
      var img = document.createElement('img');
      img.src = 'data:image/png;base64,' + text.substr(6).trim();
      img.alt = 'image written by the program';
      output.appendChild(img);
    } else {
      // A form feed clears what was shown; the text after the last one stays.
      var parts = text.split('\x0c');
      if (parts.length > 1) {
        output.textContent = '';
        text = parts.pop();
      }
      var span = document.createElement('span');
      span.className = kind === 'stdout' || kind === 'stderr' || kind === 'stdin' ? kind : 'system';
      span.textContent = text;
      output.appendChild(span);
    }
    var section = output.parentNode;
    section.scrollTop = section.scrollHeight;
  }

  function start() {
    output.textContent = '';
    status.textContent = 'Running…';
    status.className = '';
    document.body.dataset.state = 'running';
    runButton.disabled = true;
    killButton.disabled = false;
  }

  // The input box is live only while a run takes input.
  function takeInput(on) {
    stdinBox.disabled = !on;
    sendButton.disabled = !on;
    eofButton.disabled = !on;
    if (on) stdinBox.focus();
  }

  function finish(text, bad) {
    takeInput(false);
    status.textContent = text;
    status.className = bad ? 'bad' : '';
    document.body.dataset.state = 'done';
    runButton.disabled = false;
    killButton.disabled = true;
    current = null;
  }

  // The words for how a run ended, the same for both transports.
  function ended(reason, exitStatus) {
    // The socket's "exit status 3" reads like the HTTP transport's Status 3.
    var m = /^exit status (\d+)$/.exec(reason || '');
    if (m) { reason = ''; exitStatus = Number(m[1]); }
    if (reason === OUTPUT_TOO_LARGE) return finish(OUTPUT_TOO_LARGE, true);
    if (reason === TOOK_TOO_LONG) return finish('Program exited: ' + TOOK_TOO_LONG + '.', true);
    if (reason) return finish('Program exited: ' + reason.replace(/\.$/, '') + '.', true);
    if (exitStatus > 0) return finish('Program exited: status ' + exitStatus + '.', true);
    finish('Program exited.', false);
  }

  // --- WebSocket transport ---------------------------------------------------------------
  var socket = null;
  var socketReady = null;
  var nextId = 1;
  var handlers = {};

  function openSocket() {
    if (socketReady) return socketReady;
    var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/socket';
    socketReady = new Promise(function (resolve, reject) {
      var ws = new WebSocket(url);
      ws.onopen = function () { socket = ws; resolve(ws); };
      ws.onmessage = function (e) {
        var m = JSON.parse(e.data);
        var h = handlers[m.Id];
        if (h) h(m);
      };
      ws.onclose = function () {
        socket = null;
        socketReady = null;
        Object.keys(handlers).forEach(function (id) {
          handlers[id]({ Id: id, Kind: 'end', Body: 'connection to the server lost' });
        });
        reject(new Error('closed'));
      };
    });
    return socketReady;
  }

  function runSocket(body) {
    var id = String(nextId++);
    var run = {
      kill: function () {
        if (socket) socket.send(JSON.stringify({ Id: id, Kind: 'kill' }));
      },
    };
    handlers[id] = function (m) {
      if (current !== run) return;
      if (m.Kind === 'end') {
        delete handlers[id];
        ended(m.Body, 0);
        return;
      }
      write(m.Kind, m.Body);
    };
    openSocket().then(function (ws) {
      ws.send(JSON.stringify({ Id: id, Kind: 'run', Body: body }));
    }, function () {
      if (current === run) finish('Error communicating with remote server.', true);
    });
    return run;
  }

  // --- HTTP transport ----------------------------------------------------------------------
  function formEncode(fields) {
    return Object.keys(fields).map(function (k) {
      return encodeURIComponent(k) + '=' + encodeURIComponent(fields[k]);
    }).join('&').replace(/%20/g, '+');
  }

  function runHttp(body) {
    var timer = null;
    var run = {
      kill: function () {
        clearTimeout(timer);
        if (current === run) finish('Program exited: killed.', true);
      },
    };
    var xhr = new XMLHttpRequest();
    var lang = langSelect.value;
    xhr.open('POST', lang && lang !== defaultLanguage
      ? '/compile?lang=' + encodeURIComponent(lang) : '/compile');
    xhr.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded; charset=UTF-8');
    xhr.setRequestHeader('Accept', 'application/json, text/javascript, */*; q=0.01');
    xhr.setRequestHeader('X-Requested-With', 'XMLHttpRequest');
    xhr.onload = function () {
      if (current !== run) return;
      var data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status < 200 || xhr.status > 299 || !data) {
        var why = data && data.Errors ? data.Errors : 'Error communicating with remote server.';
        return finish(why, true);
      }
      var events = (data.Events || []).slice();
      var errors = data.Errors || '';
      if (data.VetErrors) {
        write('stderr', data.VetErrors);
        write('system', 'Go vet exited.\n\n');
      }
      // A build that failed: its messages, and nothing ran.
      if (errors && errors !== TOOK_TOO_LONG && events.length === 0 && 'IsTest' in data) {
        write('stderr', errors);
        return finish('Go build failed.', true);
      }
      (function next() {
        if (current !== run) return;
        if (events.length === 0 && data.IsTest && !errors) {
          var failed = data.TestsFailed || 0;
          if (failed === 0) return finish('All tests passed.', false);
          return finish(failed + (failed === 1 ? ' test failed.' : ' tests failed.'), true);
        }
        if (events.length === 0) return ended(errors, data.Status || 0);
        var e = events.shift();
        // The daemon's own notices (an output flood, a memory kill) say how the run ended, as
        // the socket's end message does.
        var show = e.Kind === 'system'
          ? function () { errors = errors || e.Message.trim(); next(); }
          : function () { write(e.Kind, e.Message); next(); };
        if (!e.Delay) show(); else timer = setTimeout(show, e.Delay / 1e6);
      })();
    };
    xhr.onerror = function () {
      if (current === run) finish('Error communicating with remote server.', true);
    };
    xhr.send(formEncode({ version: 2, body: body, withVet: vetBox.checked }));
    return run;
  }

  // --- Piston's WebSocket, with input ------------------------------------------------------
  function runPiston(body, picked) {
    var ws = null;
    var exit = null;
    var error = null;
    var run = {
      kill: function () {
        if (ws && ws.readyState === WebSocket.OPEN) {
          ws.send(JSON.stringify({ type: 'signal', signal: 'SIGKILL' }));
        }
      },
      send: function (m) {
        if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m));
      },
    };
    // The language picked, or else the daemon's default one.
    var named = picked ? Promise.resolve([{ name: picked, default: true }])
      : fetch('/languages').then(function (r) { return r.json(); });
    named.then(function (langs) {
      if (current !== run) return;
      var lang = (langs.filter(function (l) { return l.default; })[0] || langs[0] || {}).name;
      var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host +
        '/api/v2/connect';
      ws = new WebSocket(url);
      ws.onopen = function () {
        ws.send(JSON.stringify({ type: 'init', language: lang, files: [{ content: body }] }));
      };
      ws.onmessage = function (e) {
        if (current !== run) return;
        var m = JSON.parse(e.data);
        if (m.type === 'stage' && m.stage === 'run') takeInput(true);
        if (m.type === 'data') write(m.stream, m.data);
        if (m.type === 'exit') exit = m;
        if (m.type === 'error') error = m.message;
      };
      ws.onclose = function (e) {
        if (current !== run) return;
        if (error) return finish(error, true);
        if (!exit) return finish('Error communicating with remote server.', true);
        if (exit.signal) return finish('Program exited: ' + exit.signal + '.', true);
        ended('', exit.code || 0);
      };
    }, function () {
      if (current === run) finish('Error communicating with remote server.', true);
    });
    return run;
  }

  inputForm.addEventListener('submit', function (e) {
    e.preventDefault();
    if (!current || !current.send) return;
    var line = stdinBox.value + '\n';
    stdinBox.value = '';
    write('stdin', line);
    current.send({ type: 'data', stream: 'stdin', data: line });
  });
  eofButton.addEventListener('click', function () {
    if (!current || !current.send) return;
    current.send({ type: 'eof' });
    takeInput(false);
  });

  function run() {
    if (current) current.kill();
    start();
    var body = code.value;
    if (transportSelect.value === 'piston') {
      current = runPiston(body, langSelect.value || defaultLanguage);
      return;
    }
    var http = transportSelect.value === 'http' || vetBox.checked ||
      (langSelect.value && langSelect.value !== defaultLanguage);
    current = http ? runHttp(body) : runSocket(body);
  }

  // --- Languages -----------------------------------------------------------------------------
  function sampleOf(lang) {
    return SAMPLES[lang] || '';
  }

  function loadLanguages() {
    var xhr = new XMLHttpRequest();
    xhr.open('GET', '/languages');
    xhr.onload = function () {
      var list = null;
      try { list = JSON.parse(xhr.responseText); } catch (e) { return; }
      if (!Array.isArray(list) || list.length === 0) return;
      list.forEach(function (l) {
        var opt = document.createElement('option');
        opt.value = l.name;
        opt.textContent = l.version ? l.name + ' (' + l.version + ')' : l.name;
        if (l.default) { opt.selected = true; defaultLanguage = l.name; }
        langSelect.appendChild(opt);
      });
      langLabel.hidden = list.length < 2;
      var sample = sampleOf(defaultLanguage);
      if (sample && code.dataset.edited !== 'yes') code.value = sample;
    };
    xhr.send();
  }

  code.addEventListener('input', function () { code.dataset.edited = 'yes'; });
  langSelect.addEventListener('change', function () {
    var sample = sampleOf(langSelect.value);
    if (sample && code.dataset.edited !== 'yes') code.value = sample;
  });
  loadLanguages();

  runButton.addEventListener('click', run);
  killButton.addEventListener('click', function () { if (current) current.kill(); });
  code.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && e.shiftKey) { e.preventDefault(); run(); }
    if (e.key === 'Tab' && !e.ctrlKey) {
      e.preventDefault();
      var s = code.selectionStart;
      code.setRangeText('\t', s, code.selectionEnd, 'end');
    }
  });
})();
