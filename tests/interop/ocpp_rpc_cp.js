#!/usr/bin/env node
// An OCPP charge point written with the npm package `ocpp-rpc` (not our code) for interop tests.
//
//   node tests/interop/ocpp_rpc_cp.js ws://127.0.0.1:9000/CP1 [--protocol ocpp1.6|ocpp2.0.1]
//        [--unit W|A] [--password secret]
//
// Strict mode: ocpp-rpc validates every call it receives (and every answer it sends) against the
// official OCPP JSON schemas of the negotiated subprotocol; an invalid call is answered with a
// CallError and reported as a "strictValidationFailure" line.
//
// It connects, boots, sends StatusNotification Available, accepts SetChargingProfile,
// GetConfiguration/GetVariables (charging rate unit), Remote/RequestStart (then starts a
// transaction), Remote/RequestStop, ChangeAvailability, ClearChargingProfile, and prints one JSON line
// per event on stdout: {"event": "connected" | "boot" | "status" | "ready" | "call" |
// "transaction" | "strictValidationFailure" | "closed" | "error", ...}. Every received call is a
// {"event": "call", "method": ..., "params": ...} line. It exits when stdin closes or on SIGTERM/SIGINT.
'use strict';

const { RPCClient, createRPCError } = require('ocpp-rpc');

function parseArgs(argv) {
    const opts = { url: null, protocol: 'ocpp1.6', unit: 'W', password: null };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a === '--protocol') opts.protocol = argv[++i];
        else if (a === '--unit') opts.unit = argv[++i];
        else if (a === '--password') opts.password = argv[++i];
        else if (!opts.url) opts.url = a;
        else throw new Error(`unexpected argument ${a}`);
    }
    if (!opts.url) throw new Error('usage: ocpp_rpc_cp.js ws://host:port/<charge point id> [--protocol ocpp1.6]');
    return opts;
}

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

const now = () => new Date().toISOString();

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    const cut = opts.url.replace(/\/+$/, '').lastIndexOf('/');
    const endpoint = opts.url.slice(0, cut);
    const identity = decodeURIComponent(opts.url.slice(cut + 1));
    const v16 = opts.protocol === 'ocpp1.6';

    const cli = new RPCClient({
        endpoint,
        identity,
        protocols: [opts.protocol],
        strictMode: true,
        reconnect: false,
        password: opts.password || undefined,
        callTimeoutMs: 10000,
    });

    let transactionId = null;
    let seqNo = 0;

    cli.on('strictValidationFailure', (ev) => {
        emit({ event: 'strictValidationFailure', method: ev.method, outbound: ev.outbound, isCall: ev.isCall,
               error: String(ev.error && ev.error.message || ev.error), params: ev.params });
    });
    cli.on('badMessage', (ev) => emit({ event: 'badMessage', error: String(ev.error) }));
    cli.on('close', (ev) => { emit({ event: 'closed', code: ev.code, reason: String(ev.reason || '') }); });
    cli.on('call', (call) => {
        if (!call.outbound) {
            const [, , method, params] = call.payload;
            emit({ event: 'call', method, params });
        }
    });

    async function startTransaction() {
        if (v16) {
            const res = await cli.call('StartTransaction', { connectorId: 1, idTag: 'NODE', meterStart: 0, timestamp: now() });
            transactionId = res.transactionId;
            await cli.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Charging', timestamp: now() });
        } else {
            transactionId = 'node-tx-1';
            await cli.call('TransactionEvent', {
                eventType: 'Started', timestamp: now(), triggerReason: 'RemoteStart', seqNo: seqNo++,
                transactionInfo: { transactionId, chargingState: 'Charging' },
                evse: { id: 1, connectorId: 1 }, idToken: { idToken: 'NODE', type: 'Central' },
            });
        }
        emit({ event: 'transaction', transactionId });
    }

    async function stopTransaction() {
        const tx = transactionId;
        transactionId = null;
        if (v16) {
            await cli.call('StopTransaction', { transactionId: tx, meterStop: 0, timestamp: now(), reason: 'Remote' });
            await cli.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Finishing', timestamp: now() });
        } else {
            await cli.call('TransactionEvent', {
                eventType: 'Ended', timestamp: now(), triggerReason: 'RemoteStop', seqNo: seqNo++,
                transactionInfo: { transactionId: tx, chargingState: 'EVConnected', stoppedReason: 'Remote' },
            });
        }
        emit({ event: 'transaction', transactionId: null });
    }

    const later = (fn) => setTimeout(() => fn().catch((e) => emit({ event: 'error', error: String(e) })), 10);

    cli.handle('SetChargingProfile', () => ({ status: 'Accepted' }));
    cli.handle('ClearChargingProfile', () => ({ status: 'Accepted' }));
    cli.handle('ChangeAvailability', () => ({ status: 'Accepted' }));
    if (v16) {
        cli.handle('GetConfiguration', ({ params }) => {
            const value = opts.unit === 'A' ? 'Current' : 'Current,Power';
            const keys = params.key && params.key.length ? params.key : ['ChargingScheduleAllowedChargingRateUnit'];
            const known = keys.filter((k) => k === 'ChargingScheduleAllowedChargingRateUnit');
            return {
                configurationKey: known.map((key) => ({ key, readonly: true, value })),
                unknownKey: keys.filter((k) => !known.includes(k)),
            };
        });
        cli.handle('RemoteStartTransaction', () => {
            if (transactionId !== null) return { status: 'Rejected' };
            later(startTransaction);
            return { status: 'Accepted' };
        });
        cli.handle('RemoteStopTransaction', ({ params }) => {
            if (transactionId === null || params.transactionId !== transactionId) return { status: 'Rejected' };
            later(stopTransaction);
            return { status: 'Accepted' };
        });
    } else {
        cli.handle('GetVariables', ({ params }) => ({
            getVariableResult: params.getVariableData.map((d) => {
                const ok = d.component.name === 'SmartChargingCtrlr' && d.variable.name === 'RateUnit';
                const r = { attributeStatus: ok ? 'Accepted' : 'UnknownVariable', component: d.component, variable: d.variable };
                if (ok) r.attributeValue = opts.unit === 'A' ? 'A' : 'A,W';
                return r;
            }),
        }));
        cli.handle('RequestStartTransaction', () => {
            if (transactionId !== null) return { status: 'Rejected' };
            later(startTransaction);
            return { status: 'Accepted' };
        });
        cli.handle('RequestStopTransaction', ({ params }) => {
            if (transactionId === null || params.transactionId !== transactionId) return { status: 'Rejected' };
            later(stopTransaction);
            return { status: 'Accepted' };
        });
    }
    cli.handle(({ method }) => { throw createRPCError('NotImplemented', `${method} is not handled by this test peer`); });

    await cli.connect();
    emit({ event: 'connected', protocol: cli.protocol, identity });

    const boot = v16
        ? await cli.call('BootNotification', { chargePointVendor: 'ocpp-rpc', chargePointModel: 'interop-peer' })
        : await cli.call('BootNotification', { chargingStation: { vendorName: 'ocpp-rpc', model: 'interop-peer' }, reason: 'PowerUp' });
    emit({ event: 'boot', status: boot.status, interval: boot.interval });

    if (v16) {
        await cli.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available', timestamp: now() });
    } else {
        await cli.call('StatusNotification', { timestamp: now(), connectorStatus: 'Available', evseId: 1, connectorId: 1 });
    }
    emit({ event: 'status', status: 'Available' });
    emit({ event: 'ready' });

    let closing = false;
    const shutdown = async () => {
        if (closing) return;
        closing = true;
        try { await cli.close({ code: 1000, reason: 'peer shutting down' }); } catch (e) { /* already closed */ }
        process.exit(0);
    };
    process.stdin.on('end', shutdown);
    process.stdin.on('close', shutdown);
    process.stdin.resume();
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
}

main().catch((err) => {
    emit({ event: 'error', error: String(err && err.stack || err) });
    process.exit(1);
});
