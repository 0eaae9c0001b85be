#!/usr/bin/python3
"""Drive Nova's own ConsoleAuthToken code against a cell database (Debian's python3-nova).

Run with /usr/bin/python3 (the interpreter that has the `nova` package), never a virtualenv one:

  nova_console_tokens.py --database-url postgresql+psycopg2://postgres@127.0.0.1:5432/cell \\
      authorize --instance-uuid UUID --host 10.0.0.1 --port 5900 [--ttl 600] [--console-type novnc]
  nova_console_tokens.py --database-url URL validate --token TOKEN
  nova_console_tokens.py --database-url URL clean-expired
  nova_console_tokens.py --database-url URL clean-instance --instance-uuid UUID
  nova_console_tokens.py --database-url URL capture          # the SQL of each call, as JSON

Every command prints one JSON object. `authorize` creates the `instances` row Nova's create checks
for (console_auth_token_create raises InstanceNotFound without one) when it is missing.
`capture` runs authorize, validate, clean_expired_console_auths and
clean_console_auths_for_instance and prints, for each, the statements SQLAlchemy sent through
psycopg2 (the text with its %(name)s placeholders, the parameters, and the text as psycopg2
interpolated it, which is what PostgreSQL received): scripts/nova/regenerate-fixture.sh keeps them
as test/fixtures/nova/console-auth-token-statements.json.
"""
import argparse
import json
import sys
import tempfile
import uuid


def configure(database_url):
    from nova import config
    from nova import objects
    conf = tempfile.NamedTemporaryFile('w', suffix='.conf', delete=False)
    conf.write('[database]\nconnection = %s\n' % database_url)
    conf.flush()
    config.parse_args([sys.argv[0], '--config-file', conf.name], configure_db=True, init_rpc=False)
    objects.register_all()


def admin_context():
    from nova import context
    return context.get_admin_context()


def ensure_instance(instance_uuid):
    from nova.db.main import api as db
    import sqlalchemy as sa
    with db.get_engine().begin() as connection:
        connection.execute(
            sa.text("INSERT INTO instances (uuid, created_at, deleted) SELECT :uuid, now(), 0 "
                    "WHERE NOT EXISTS (SELECT 1 FROM instances WHERE uuid = :uuid)"),
            {'uuid': instance_uuid})


def authorize(args):
    from nova import objects
    ensure_instance(args.instance_uuid)
    token = objects.ConsoleAuthToken(
        context=admin_context(), console_type=args.console_type, host=args.host, port=args.port,
        instance_uuid=args.instance_uuid, access_url_base=args.access_url_base)
    plaintext = token.authorize(args.ttl)
    return {'token': plaintext, 'id': token.id, 'instance_uuid': token.instance_uuid, 'access_url': token.access_url}


def validate(args):
    from nova import exception
    from nova import objects
    try:
        found = objects.ConsoleAuthToken.validate(admin_context(), args.token)
    except exception.InvalidToken:
        return {'valid': False}
    return {'valid': True, 'id': found.id, 'console_type': found.console_type, 'host': found.host,
            'port': found.port, 'instance_uuid': found.instance_uuid,
            'internal_access_path': found.internal_access_path, 'access_url_base': found.access_url_base}


def clean_expired(args):
    from nova import objects
    objects.ConsoleAuthToken.clean_expired_console_auths(admin_context())
    return {'cleaned': 'expired'}


def clean_instance(args):
    from nova import objects
    objects.ConsoleAuthToken.clean_console_auths_for_instance(admin_context(), args.instance_uuid)
    return {'cleaned': args.instance_uuid}


def capture(args):
    """Records what each of Nova's four calls sends to PostgreSQL."""
    import sqlalchemy as sa
    from nova.db.main import api as db
    recorded = []

    def record(connection, cursor, statement, parameters, context, executemany):
        if 'console_auth_tokens' in statement:
            recorded.append({
                'statement': statement,
                'parameters': parameters if isinstance(parameters, dict) else list(parameters),
                'sent': cursor.mogrify(statement, parameters).decode(),
            })

    instance = str(uuid.uuid4())
    ensure_instance(instance)
    sa.event.listen(db.get_engine(), 'before_cursor_execute', record)
    calls = {}

    def run(name, call):
        del recorded[:]
        result = call()
        calls[name] = {'result': result, 'statements': list(recorded)}
        return result

    issued = run('authorize', lambda: authorize(argparse.Namespace(
        instance_uuid=instance, console_type='novnc', host='10.0.0.1', port=5900, ttl=600,
        access_url_base='http://127.0.0.1:6080/vnc_auto.html')))
    run('validate', lambda: validate(argparse.Namespace(token=issued['token'])))
    run('clean_expired_console_auths', lambda: clean_expired(None))
    run('clean_console_auths_for_instance', lambda: clean_instance(argparse.Namespace(instance_uuid=instance)))
    # The token and its instance are made up for this run; keep no plaintext token in the output.
    calls['authorize']['result']['token'] = '(redacted)'
    calls['authorize']['result']['access_url'] = '(redacted)'
    from nova import version
    return {
        'comment': 'The statements Nova %s sends to PostgreSQL for ConsoleAuthToken.authorize, ConsoleAuthToken.validate, '
                   'clean_expired_console_auths and clean_console_auths_for_instance, recorded by '
                   'scripts/nova/nova_console_tokens.py capture (SQLAlchemy before_cursor_execute; "sent" is psycopg2 '
                   'mogrify, the text PostgreSQL received). Regenerate with scripts/nova/regenerate-fixture.sh.'
                   % version.version_string(),
        'novaVersion': version.version_string(),
        'calls': calls,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--database-url', required=True, help='SQLAlchemy URL of the Nova cell database')
    commands = parser.add_subparsers(dest='command', required=True)
    issue = commands.add_parser('authorize')
    issue.add_argument('--instance-uuid', default=None)
    issue.add_argument('--console-type', default='novnc')
    issue.add_argument('--host', required=True)
    issue.add_argument('--port', type=int, required=True)
    issue.add_argument('--ttl', type=int, default=600)
    issue.add_argument('--access-url-base', default='http://127.0.0.1:6080/vnc_auto.html')
    check = commands.add_parser('validate')
    check.add_argument('--token', required=True)
    commands.add_parser('clean-expired')
    instance = commands.add_parser('clean-instance')
    instance.add_argument('--instance-uuid', required=True)
    commands.add_parser('capture')
    args = parser.parse_args()
    configure(args.database_url)
    if getattr(args, 'instance_uuid', 'given') is None:
        args.instance_uuid = str(uuid.uuid4())
    handlers = {'authorize': authorize, 'validate': validate, 'clean-expired': clean_expired,
                'clean-instance': clean_instance, 'capture': capture}
    json.dump(handlers[args.command](args), sys.stdout, indent=2, default=str)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
