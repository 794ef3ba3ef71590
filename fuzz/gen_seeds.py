#!/usr/bin/env python3
"""Write the seed corpora under fuzz/corpus-seeds/{framer,sasl}/ (deterministic output).

Run from anywhere: `python3 fuzz/gen_seeds.py`. The files are small and committed; the fuzzers
read them as an extra (read-only) corpus directory, see fuzz/README.md.

Framer seeds follow the layout in fuzz_targets/framer.rs: a flags byte, chunk-size bytes, then the
stream. SASL seeds follow fuzz_targets/sasl.rs: a flags byte, then messages separated by FF FF
(raw modes) or the cooperative-mode header bytes and fields.
"""

import base64
import hashlib
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus-seeds")

CLIENT = "jabber:client"
COMPONENT = "jabber:component:accept"


def header(ns, to="broker.example", extra=""):
    return (
        "<?xml version='1.0'?><stream:stream xmlns='%s' "
        "xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'%s>" % (ns, to, extra)
    ).encode()


CLIENT_STANZAS = [
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
    + base64.b64encode(b"\0cpe1\0secret")
    + b"</auth>",
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
    + base64.b64encode(b"n,,n=cpe1,r=fyko+d2lbbFgONRv9qkxdawL")
    + b"</auth>",
    b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    + base64.b64encode(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    + b"</response>",
    b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
    b"<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>cwmp</resource></bind></iq>",
    b"<iq type='set' id='sess_1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    b"<iq type='get' id='roster_1'><query xmlns='jabber:iq:roster'/></iq>",
    b"<presence/>",
    b"<presence type='unavailable'><status>bye &amp; thanks</status></presence>",
    b"<iq type='get' id='p1' to='broker.example'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"<iq type='result' id='cr001' to='acs@broker.example/acs' from='cpe1@broker.example/cwmp'/>",
    b"<iq type='error' id='cr002' xml:lang='en'><error type='cancel'>"
    b"<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
    b"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>odd &lt;&gt; &quot;text&apos; &#x41;&#13;</text>"
    b"</error></iq>",
    b'<message to="cpe1@broker.example" type="chat"><body>a\tb\r\nc &#10; &#9;</body></message>',
    b"<message xmlns:x='urn:x' x:attr='v&#10;w' a='&#9;'><x:payload>p</x:payload><![CDATA[<cdata>]]></message>",
    b" ",
    b"\n",
]

CONN_REQ = (
    b"<iq from='acs.broker.example' to='cpe1@broker.example/cwmp' type='get' id='cr001'>"
    b"<connectionRequest xmlns='urn:broadband-forum-org:cwmp:xmppConnReq-1-0'>"
    b"<username>acsuser</username><password>p&amp;ss'w\"rd</password>"
    b"</connectionRequest></iq>"
)

COMPONENT_STANZAS = [
    b"<handshake>aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d</handshake>",
    CONN_REQ,
    b"<iq type='get' id='p2' from='acs.broker.example' to='broker.example'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"<message from='acs.broker.example' to='cpe1@broker.example'><body>hi</body></message>",
]

FOOTER = b"</stream:stream>"


def framer_seed(flags, sizes, body):
    assert len(sizes) < 16
    return bytes([flags | (len(sizes) << 4)]) + bytes(s - 1 for s in sizes) + body


def framer_seeds():
    seeds = {}
    client = header(CLIENT) + b"".join(CLIENT_STANZAS) + FOOTER
    component = header(COMPONENT, to="acs.broker.example") + b"".join(COMPONENT_STANZAS) + FOOTER
    seeds["client-whole"] = framer_seed(0, [], client)
    seeds["client-bytewise"] = framer_seed(0, [1], client)
    seeds["client-chunks"] = framer_seed(0, [7, 1, 64, 3, 200], client)
    seeds["component-whole"] = framer_seed(1, [], component)
    seeds["component-chunks"] = framer_seed(1, [13, 2, 100], component)
    # With the header prepended by the target (flag bit 1): stanzas only.
    for i, stanza in enumerate(CLIENT_STANZAS):
        seeds["client-stanza-%02d" % i] = framer_seed(2, [5, 11], stanza)
    for i, stanza in enumerate(COMPONENT_STANZAS):
        seeds["component-stanza-%02d" % i] = framer_seed(3, [9], stanza)
    seeds["conn-req-tiny-limits"] = framer_seed(2 | 4, [4], CONN_REQ)
    seeds["header-only"] = framer_seed(0, [], header(CLIENT))
    seeds["header-double-quotes"] = framer_seed(
        0,
        [2],
        b'<stream:stream xmlns:stream="http://etherx.jabber.org/streams" xmlns="jabber:client" '
        b'from="cpe1@broker.example" to="broker.example" version="1.0" xml:lang="en">',
    )
    seeds["keepalives"] = framer_seed(2, [1], b" \n \t " + b"<presence/>" + b"   " + FOOTER)
    seeds["deep"] = framer_seed(2, [], b"<a>" * 17 + b"</a>" * 17)
    seeds["many-attrs"] = framer_seed(
        2, [], b"<message " + b" ".join(b"a%d='%d'" % (i, i) for i in range(33)) + b"/>"
    )
    seeds["big-text"] = framer_seed(2, [255, 255], b"<message><body>" + b"x" * 4100 + b"</body></message>")
    seeds["many-children"] = framer_seed(2, [255], b"<a>" + b"<b/>" * 1000 + b"</a>")
    seeds["restricted-comment"] = framer_seed(2, [], b"<message><!-- c --></message>")
    seeds["restricted-doctype"] = framer_seed(0, [], b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e 'e'>]>")
    seeds["restricted-pi"] = framer_seed(2, [], b"<message><?pi x?></message>")
    seeds["not-well-formed"] = framer_seed(2, [3], b"<message></presence>")
    seeds["prefixed-stanza"] = framer_seed(
        0,
        [],
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns:c='jabber:client' "
        b"xmlns='jabber:client'><c:message c:to='x'/>" + FOOTER,
    )
    seeds["wrong-ns"] = framer_seed(0, [], b"<stream:stream xmlns:stream='urn:wrong'>")
    seeds["not-a-stream"] = framer_seed(0, [], b"<message/>")
    return seeds


# ---------------------------------------------------------------------------------------------
# SASL

SEP = b"\xff\xff"


def sasl_raw(mode, flags, *messages):
    return bytes([mode | flags]) + SEP.join(messages)


def sasl_seeds():
    seeds = {}
    # PLAIN, initial response (flag 4).
    seeds["plain-ok"] = sasl_raw(0, 4, b"\0alice\0wonder:land")
    seeds["plain-ok-upper-authzid"] = sasl_raw(0, 4, b"alice@acs.example\0ALICE\0wonder:land")
    seeds["plain-scram-account"] = sasl_raw(0, 4, "\0carol\0c4rol=,pw\u00e9".encode())
    seeds["plain-wrong"] = sasl_raw(0, 4, b"\0bob\0b0b pas")
    seeds["plain-unknown"] = sasl_raw(0, 4, b"\0dave\0x")
    seeds["plain-bad-authzid"] = sasl_raw(0, 4, b"bob\0alice\0wonder:land")
    # PLAIN without initial response, and with "=" (flag 16).
    seeds["plain-no-initial"] = sasl_raw(0, 0, b"\0bob\0b0b pass")
    seeds["plain-empty-initial"] = sasl_raw(0, 16, b"\0bob\0b0b pass")
    # PLAIN, base64 text (flag 8).
    seeds["plain-b64"] = sasl_raw(0, 4 | 8, base64.b64encode(b"\0alice\0wonder:land"))
    seeds["plain-b64-ws"] = sasl_raw(0, 4 | 8, b"AGFs\r\n aWNl\tAHdvbmRlcjpsYW5k")
    seeds["plain-abort"] = sasl_raw(0, 32, b"\0alice\0wonder:land")
    # SCRAM client-first (RFC 5802 example nonce) and a (necessarily wrong) client-final.
    first = b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL"
    final = b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    final256 = (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    for mode, name in ((1, "sha1"), (2, "sha256")):
        seeds["scram-%s-initial" % name] = sasl_raw(mode, 4, first, final if mode == 1 else final256)
        seeds["scram-%s-no-initial" % name] = sasl_raw(mode, 0, first, final)
        seeds["scram-%s-authzid" % name] = sasl_raw(mode, 4, b"y,a=carol@acs.example,n=Carol,r=abc,x=ext", final)
        seeds["scram-%s-escaped" % name] = sasl_raw(mode, 4, b"n,,n=a=2Cb=3Dc,r=%%%", b"c=biws,r=%%%x,p=AAAA")
        seeds["scram-%s-cbind" % name] = sasl_raw(mode, 4, b"p=tls-unique,,n=alice,r=abc")
        seeds["scram-%s-b64" % name] = sasl_raw(mode, 4 | 8, base64.b64encode(first), base64.b64encode(final))
    # Cooperative SCRAM (mode 3): choice, user, case mask, corruption, then fields
    # nonce FF FF fuzz-name FF FF fuzz-authzid FF FF wrong-password-seed.
    def coop(choice, user, case, corrupt, nonce=b"clientNONCE", name=b"", authzid=b"", seed=b""):
        return bytes([3, choice, user, case, corrupt]) + SEP.join([nonce, name, authzid, seed])

    for sha in (0, 1):
        h = "sha256" if sha else "sha1"
        for user in range(5):
            seeds["coop-%s-user%d-ok" % (h, user)] = coop(sha | 2, user, 0, 0, name=b"Bob")
        seeds["coop-%s-no-initial" % h] = coop(sha, 2, 0, 0)
        seeds["coop-%s-upper-y-authzid" % h] = coop(sha | 2 | 4 | (2 << 3), 0, 0xFF, 0)
        seeds["coop-%s-wrong-password" % h] = coop(sha | 2 | 32, 1, 0, 0, seed=b"guess")
        seeds["coop-%s-corrupt" % h] = coop(sha | 2, 2, 0, 7)
        seeds["coop-%s-extensions" % h] = coop(sha | 2 | 64 | 128, 0, 0, 0)
        seeds["coop-%s-fuzz-authzid" % h] = coop(sha | 2 | (3 << 3), 4, 0, 0, name=b"x,y=z", authzid=b"x,y=z@d")
    return seeds


def write(kind, seeds):
    directory = os.path.join(OUT, kind)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return len(seeds)


def main():
    n = write("framer", framer_seeds())
    m = write("sasl", sasl_seeds())
    print("wrote %d framer and %d sasl seeds under %s" % (n, m, OUT))
    # Fingerprint, so a README can say which seed set a run used.
    digest = hashlib.sha256()
    for kind in ("framer", "sasl"):
        for name in sorted(os.listdir(os.path.join(OUT, kind))):
            with open(os.path.join(OUT, kind, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    print("seed set sha256 %s" % digest.hexdigest()[:16])


if __name__ == "__main__":
    main()
