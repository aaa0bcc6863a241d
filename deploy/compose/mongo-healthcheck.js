// Healthcheck of the compose MongoDB (run by mongosh --nodb inside the mongo container).
//
// Idempotent, so it can run every few seconds for the life of the container:
//   1. initiates the single-node replica set `rs0` the first time (transactions and change
//      streams need a replica set);
//   2. reports unhealthy until this node is a writable primary;
//   3. creates the application user (readWrite on the deskstream database) if it is missing.
// The root credentials are those the image created on first start (MONGO_INITDB_ROOT_*);
// the docker healthcheck runs with the container's environment.

const env = process.env;
const replicaSet = env.DESKSTREAM_MONGO_REPLICA_SET || "rs0";
const memberHost = env.DESKSTREAM_MONGO_MEMBER_HOST || "mongo:27017";
const appUser = env.DESKSTREAM_MONGO_APP_USER;
const appPassword = env.DESKSTREAM_MONGO_APP_PASSWORD;
const appDatabase = env.DESKSTREAM_MONGO_DATABASE || "deskstream";

function run(db, command) {
  // mongosh throws on a failed command; turn that into a result we can look at.
  try {
    return db.runCommand(command);
  } catch (e) {
    return { ok: 0, code: e.code, codeName: e.codeName, errmsg: e.message };
  }
}

const conn = new Mongo("mongodb://127.0.0.1:27017/?directConnection=true&serverSelectionTimeoutMS=3000");
const admin = conn.getDB("admin");
admin.auth(env.MONGO_INITDB_ROOT_USERNAME, env.MONGO_INITDB_ROOT_PASSWORD);

const status = run(admin, { replSetGetStatus: 1 });
if (status.ok !== 1) {
  if (status.codeName !== "NotYetInitialized" && status.code !== 94) {
    print(`replSetGetStatus failed: ${status.errmsg}`);
    quit(1);
  }
  const initiated = run(admin, {
    replSetInitiate: { _id: replicaSet, members: [{ _id: 0, host: memberHost }] },
  });
  print(`replSetInitiate: ${JSON.stringify(initiated)}`);
  quit(1); // healthy on a later run, once the election made this node primary
}

const hello = run(admin, { hello: 1 });
if (!hello.isWritablePrimary) {
  print("not (yet) a writable primary");
  quit(1);
}

if (appUser && appPassword) {
  const users = run(admin, { usersInfo: appUser });
  if (users.ok === 1 && users.users.length === 0) {
    const created = run(admin, {
      createUser: appUser,
      pwd: appPassword,
      roles: [{ role: "readWrite", db: appDatabase }],
    });
    if (created.ok !== 1) {
      print(`createUser failed: ${created.errmsg}`);
      quit(1);
    }
    print(`created user ${appUser} (readWrite on ${appDatabase})`);
  }
}
quit(0);
