# Sourced by the bench scripts: the backend every proxy is measured against, nginx returning
# a small JSON body, with its config, pid and logs under a work directory.
#
#   start_backend DIR PORT [WORKERS]    # writes DIR/backend.conf, pid in DIR/backend.pid
start_backend() {
  local dir=$1 port=$2 workers=${3:-1}
  cat > "$dir/backend.conf" <<CONF
worker_processes $workers;
daemon on;
pid $dir/backend.pid;
error_log $dir/backend-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fcgi;
  uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port;
    location / {
      default_type application/json;
      return 200 '{"items":[{"id":1,"symbol":"INFY","side":"BUY","quantity":10}]}';
    }
  }
}
CONF
  nginx -c "$dir/backend.conf" -e "$dir/backend-error.log"
}
